//! A token bucket: a rate with a burst, refilled continuously. Pure logic, no clock of its
//! own: callers pass the time.

use std::time::{Duration, Instant};

/// Tokens refill at `rate` per second up to `burst`; taking more than there are leaves a debt
/// that says how long the taker must wait.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens (always: the work is already done) and returns how long to wait before
    /// the next take would find the bucket non-negative again, or `None` when no wait is due.
    /// `rate` and `burst` are passed each time so that a reload applies at once.
    pub fn take(&mut self, n: f64, rate: f64, burst: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst) - n;
        if self.tokens >= 0.0 || rate <= 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(-self.tokens / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(b.take(1.0, 10.0, 10.0, t0), None);
        }
        // The eleventh is one token short: a tenth of a second at 10/s.
        let wait = b.take(1.0, 10.0, 10.0, t0).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After that wait the debt is paid and one more token has come.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(b.take(1.0, 10.0, 10.0, t1), None);
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, t0);
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(b.take(1.0, 1.0, 5.0, later), None);
        }
        assert!(b.take(1.0, 1.0, 5.0, later).is_some());
    }

    #[test]
    fn bytes_can_overdraw_in_one_take() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, t0);
        // One 3000-byte message against 1000 B/s: two seconds of debt.
        let wait = b.take(3000.0, 1000.0, 1000.0, t0).unwrap();
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-9, "{wait:?}");
    }
}
