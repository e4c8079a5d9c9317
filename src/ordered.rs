//! A parallel map that keeps order: items go round-robin to a few worker
//! threads, and their results come back in the order the items were fed,
//! with a bounded number in flight per worker (so bounded memory).
//!
//! Round-robin needs no reorder buffer: item `n` goes to worker `n % w`,
//! and the results are taken from worker `n % w` in turn. Dropping the
//! [`Results`] stops the workers at their next send, and then the
//! [`Feeder`] at its next one.

use std::thread::Scope;

use crossbeam_channel::{bounded, Receiver, Sender};

/// Hands items to the workers of [`start`]; dropping it ends the stream.
pub struct Feeder<I> {
    inputs: Vec<Sender<I>>,
    next: usize,
}

impl<I> Feeder<I> {
    /// Hands `item` to the next worker, waiting while it is busy; false
    /// once nobody wants the results any more.
    pub fn send(&mut self, item: I) -> bool {
        let ok = self.inputs[self.next].send(item).is_ok();
        self.next = (self.next + 1) % self.inputs.len();
        ok
    }
}

/// The results in the order their items were fed; ends after the last.
pub struct Results<O> {
    outputs: Vec<Receiver<O>>,
    next: usize,
}

impl<O> Iterator for Results<O> {
    type Item = O;

    fn next(&mut self) -> Option<O> {
        // A worker's channel closes only once the feeder is gone and it has
        // sent all it had: item n was never fed if worker n % w has none.
        let out = self.outputs[self.next].recv().ok()?;
        self.next = (self.next + 1) % self.outputs.len();
        Some(out)
    }
}

/// Starts `workers` threads in `scope` applying `f`. Each holds at most one
/// item waiting, one in hand and one result waiting.
pub fn start<'scope, I, O, F>(
    scope: &'scope Scope<'scope, '_>,
    workers: usize,
    f: F,
) -> (Feeder<I>, Results<O>)
where
    I: Send + 'scope,
    O: Send + 'scope,
    F: Fn(I) -> O + Clone + Send + 'scope,
{
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    for _ in 0..workers.max(1) {
        let (in_tx, in_rx) = bounded::<I>(1);
        let (out_tx, out_rx) = bounded::<O>(1);
        let f = f.clone();
        scope.spawn(move || {
            for item in in_rx {
                if out_tx.send(f(item)).is_err() {
                    break; // the results were dropped
                }
            }
        });
        inputs.push(in_tx);
        outputs.push(out_rx);
    }
    (Feeder { inputs, next: 0 }, Results { outputs, next: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results_come_in_the_order_fed_whatever_each_takes() {
        let got: Vec<u64> = std::thread::scope(|s| {
            let (mut feed, results) = start(s, 3, |n: u64| {
                // later items often finish first
                std::thread::sleep(Duration::from_micros((n * 7919) % 13 * 50));
                n * n
            });
            s.spawn(move || {
                for n in 0..200 {
                    assert!(feed.send(n));
                }
            });
            results.collect()
        });
        assert_eq!(got, (0..200).map(|n| n * n).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_the_results_stops_the_feeder() {
        std::thread::scope(|s| {
            let (mut feed, mut results) = start(s, 2, |n: u32| n);
            let feeder = s.spawn(move || (0..1_000_000).take_while(|&n| feed.send(n)).count());
            assert_eq!(results.next(), Some(0));
            drop(results);
            // stopped long before the end, with at most a few in flight
            assert!(feeder.join().unwrap() < 16);
        });
    }

    #[test]
    fn an_empty_stream_ends_at_once() {
        std::thread::scope(|s| {
            let (feed, results) = start(s, 4, |n: u8| n);
            drop(feed);
            assert_eq!(results.count(), 0);
        });
    }
}
