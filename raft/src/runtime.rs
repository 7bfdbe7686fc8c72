//! openraft's async runtime: tokio, with a random source the simulator can seed.
//!
//! openraft draws its election timeouts from `AsyncRuntime::thread_rng()`; tokio's runtime type
//! uses `rand::thread_rng()`, which is seeded by the OS, so two simulated runs with one seed would
//! still elect differently. [`SeededTokio`] delegates everything to [`TokioRuntime`] except that
//! random source: a per-thread generator seeded from the OS on first use (production behaviour
//! unchanged), or from [`seed_thread_rng`] (the simulator, which runs every node on one thread).

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};

thread_local! {
    static RNG_STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Seeds this thread's Raft random source (election timeouts). Call before creating Raft
/// instances on the thread.
pub fn seed_thread_rng(seed: u64) {
    RNG_STATE.with(|s| s.set(Some(seed)));
}

/// Handle on the calling thread's generator (splitmix64; small, and fully set by its seed).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRng;

impl rand::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        RNG_STATE.with(|s| {
            let state = s.get().unwrap_or_else(rand::random::<u64>);
            let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(Some(next));
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// [`TokioRuntime`] with a seedable [`ThreadRng`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeededTokio;

type Tokio = TokioRuntime;

impl AsyncRuntime for SeededTokio {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    #[test]
    fn a_seeded_thread_repeats_its_draws() {
        let draw = || {
            let mut r = ThreadRng;
            (0..8).map(|_| r.gen_range(400..800u64)).collect::<Vec<_>>()
        };
        seed_thread_rng(7);
        let a = draw();
        seed_thread_rng(7);
        assert_eq!(a, draw());
        seed_thread_rng(8);
        assert_ne!(a, draw());
    }
}
