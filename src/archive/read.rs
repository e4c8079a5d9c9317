//! Reads of archive data (blocks of fulls and deltas) for restores,
//! verifies, mounts, merges and synthetic fulls all go through
//! [`read_at`], so an error names the file, and fault-injection tests can
//! make any of them fail with EIO ([`crate::fault::read_fault`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Fills `buf` from `file` (at `path`) at `offset`.
pub fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    if let Some(e) = crate::fault::read_fault(path) {
        return Err(crate::error::Error::io(path, e));
    }
    file.read_exact_at(buf, offset).at(path)
}
