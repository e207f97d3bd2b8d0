//! The scenarios' calendar days, relative to the day the tests run: sessions and events sit
//! on "tomorrow" (UTC), so every window the system reads (a day back, 180 days ahead) holds
//! them whatever the date. A fixed date falls out of the window days later, and the tests
//! that used one began to fail then (found by running the suite under `faketime +3d`).

use std::sync::OnceLock;

use chrono::{Duration, NaiveDate, Utc};

/// The scenarios' day: tomorrow (UTC) at the first call in this test process. Every test of
/// the process shares it, so a run that crosses midnight stays consistent.
pub fn day() -> NaiveDate {
    static DAY: OnceLock<NaiveDate> = OnceLock::new();
    *DAY.get_or_init(|| (Utc::now() + Duration::days(1)).date_naive())
}

/// The scenarios' day moved by `days`, as `YYYY-MM-DD` (to build timestamps:
/// `format!("{}T09:00:00Z", date(0))`).
pub fn date(days: i64) -> String {
    (day() + Duration::days(days))
        .format("%Y-%m-%d")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenarios_day_is_tomorrow_and_stays_the_same() {
        let tomorrow = (Utc::now() + Duration::days(1)).date_naive();
        let first = day();
        assert!(first == tomorrow || first + Duration::days(1) == tomorrow);
        assert_eq!(day(), first);
        assert_eq!(date(1), (first + Duration::days(1)).to_string());
    }
}
