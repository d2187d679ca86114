//! When to try again: exponential backoff with jitter.

use std::time::Duration;

use crate::config::RetryConfig;

/// The wait before the attempt after attempt `attempt` (1-based): `base × 2^(attempt-1)`,
/// capped at `max`, then "equal jitter": half of it fixed, half random (`jitter` in [0, 1)).
pub fn backoff(config: &RetryConfig, attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let delay = config
        .base_delay_ms
        .saturating_mul(1u64 << exponent)
        .min(config.max_delay_ms);
    let half = delay / 2;
    let spread = ((delay - half) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    Duration::from_millis(half + spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            base_delay_ms: 1000,
            max_delay_ms: 10_000,
        }
    }

    #[test]
    fn grows_exponentially_and_is_capped() {
        let c = config();
        assert_eq!(backoff(&c, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&c, 1, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(&c, 2, 1.0), Duration::from_millis(2000));
        assert_eq!(backoff(&c, 3, 0.5), Duration::from_millis(3000));
        assert_eq!(backoff(&c, 10, 1.0), Duration::from_millis(10_000));
        assert_eq!(backoff(&c, 200, 1.0), Duration::from_millis(10_000));
        assert_eq!(backoff(&c, 0, 1.0), Duration::from_millis(1000));
    }
}
