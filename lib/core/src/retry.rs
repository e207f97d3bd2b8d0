//! Retry schedules and the parsing of human durations (`30s`, `5m`, `2h`, `1d`).

use std::time::Duration;

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{t}` is not a duration like 30s, 5m, 2h or 1d"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{t}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("`{t}` has an unknown unit (use ms, s, m, h or d)")),
    }
}

/// Tries of a conditional commit that keeps losing its race to another writer of the same
/// records (a delta round writing the session's mapping, the sweep, a change for the same
/// session) before the work is given up as contended. Each lost race re-reads what it
/// writes, so a try is cheap; the pause between them ([`after_lost_race`]) spreads racing
/// writers out.
pub const LOST_RACE_ATTEMPTS: usize = 10;

/// A short random pause (1-4 ms) after a lost race, before the re-read and the next try.
pub async fn after_lost_race() {
    let pause = rand::random::<u64>() % 4 + 1;
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// The error once every try lost its race: nothing the caller did wrong, worth a retry
/// (503), not a conflict the caller caused (409).
pub fn contended(entity: &str, id: &str) -> crate::Error {
    crate::Error::Unavailable(format!(
        "the {entity} {id} is being changed by other writers; retry"
    ))
}

/// `e`, with a lost race turned into [`contended`]: for the callers that answer the platform
/// (a round re-plans on a [`crate::Error::Conflict`] instead).
pub fn lost_every_race(e: crate::Error) -> crate::Error {
    match e {
        crate::Error::Conflict { entity, id } => contended(entity, &id),
        e => e,
    }
}

/// How long to wait before each retry. `delays[0]` is the wait after the first failed
/// attempt; when they run out the work has failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// Three more attempts after 30 s, 5 min and 30 min (the platform's contract).
    fn default() -> Self {
        RetryPolicy {
            delays: vec![
                Duration::from_secs(30),
                Duration::from_secs(300),
                Duration::from_secs(1800),
            ],
        }
    }
}

/// Longest single wait a schedule may contain.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Most retries a schedule may contain.
pub const MAX_RETRIES: usize = 20;

impl RetryPolicy {
    /// Parses a comma-separated schedule such as `30s,5m,30m`. An empty string means "no
    /// retries".
    pub fn parse(text: &str) -> Result<RetryPolicy, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        RetryPolicy::from_delays(delays)
    }

    pub fn from_delays(delays: Vec<Duration>) -> Result<RetryPolicy, String> {
        if delays.len() > MAX_RETRIES {
            return Err(format!("at most {MAX_RETRIES} retries"));
        }
        if delays.iter().any(|d| *d > MAX_RETRY_DELAY) {
            return Err("a retry delay may be at most 7d".into());
        }
        Ok(RetryPolicy { delays })
    }

    /// The wait before attempt `attempts_made + 1`, or `None` when no retry is left.
    pub fn next_delay(&self, attempts_made: usize) -> Option<Duration> {
        attempts_made
            .checked_sub(1)
            .and_then(|i| self.delays.get(i))
            .copied()
    }

    /// The wait to use when the server asked for `retry_after`: honoured, but never below
    /// the schedule's own wait nor above `cap`.
    pub fn honour_retry_after(
        scheduled: Duration,
        retry_after: Option<Duration>,
        cap: Duration,
    ) -> Duration {
        match retry_after {
            Some(asked) => asked.max(scheduled).min(cap.max(scheduled)),
            None => scheduled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_schedule_is_the_contract() {
        let p = RetryPolicy::default();
        assert_eq!(p, RetryPolicy::parse("30s,5m,30m").unwrap());
        assert_eq!(p.next_delay(0), None);
        assert_eq!(p.next_delay(1), Some(Duration::from_secs(30)));
        assert_eq!(p.next_delay(3), Some(Duration::from_secs(1800)));
        assert_eq!(p.next_delay(4), None);
    }

    #[test]
    fn schedule_limits() {
        assert!(RetryPolicy::parse("8d").is_err());
        assert!(RetryPolicy::parse(&vec!["1s"; 21].join(",")).is_err());
        assert_eq!(RetryPolicy::parse("").unwrap().delays.len(), 0);
    }

    #[test]
    fn retry_after_is_bounded() {
        let s = Duration::from_secs(30);
        let cap = Duration::from_secs(3600);
        assert_eq!(RetryPolicy::honour_retry_after(s, None, cap), s);
        assert_eq!(
            RetryPolicy::honour_retry_after(s, Some(Duration::from_secs(5)), cap),
            s
        );
        assert_eq!(
            RetryPolicy::honour_retry_after(s, Some(Duration::from_secs(120)), cap),
            Duration::from_secs(120)
        );
        assert_eq!(
            RetryPolicy::honour_retry_after(s, Some(Duration::from_secs(99_999)), cap),
            cap
        );
    }
}
