//! What a package installs beside the binary, made from the CLI's own
//! definition so it never drifts from it: shell completions
//! (`rbdelta completions SHELL`) and man pages (`rbdelta man DIR`, which
//! dist/deb/build.sh runs).

use std::path::PathBuf;

use clap::CommandFactory;

use super::{Cli, Ctx, Failure};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write rbdelta.1 and rbdelta-SUBCOMMAND.1 into.
    dir: PathBuf,
}

/// Prints the completion script for a shell on stdout.
pub fn completions(_ctx: &Ctx, a: CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "rbdelta", &mut std::io::stdout());
    Ok(())
}

/// Writes a man page for rbdelta and one per visible subcommand.
pub fn man(_ctx: &Ctx, a: ManArgs) -> Result<(), Failure> {
    let cmd = Cli::command();
    std::fs::create_dir_all(&a.dir).map_err(|e| anyhow::anyhow!("{}: {e}", a.dir.display()))?;
    let mut written = 0;
    for (name, page) in std::iter::once(("rbdelta".to_string(), cmd.clone())).chain(
        cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| {
            (
                format!("rbdelta-{}", s.get_name()),
                s.clone()
                    .display_name(format!("rbdelta-{}", s.get_name()))
                    .bin_name(format!("rbdelta {}", s.get_name())),
            )
        }),
    ) {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .section("1")
            .manual("rbdelta")
            .render(&mut out)?;
        let path = a.dir.join(format!("{name}.1"));
        std::fs::write(&path, out).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        written += 1;
    }
    println!("{written} man pages in {}", a.dir.display());
    Ok(())
}
