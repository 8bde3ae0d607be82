//! The router's queue time, from the `X-Request-Start` header a router or load balancer
//! in front of molt stamps on a request: Heroku's router writes milliseconds since the
//! Unix epoch (`1407944034295`), nginx `t=${msec}` (`t=1407944034.295`, seconds with a
//! fraction), Apache's `mod_headers` `t=%t` (microseconds), and some proxies nanoseconds.
//! Judoscale and HireFire read the same header the same way (docs/scaling.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A stamp further back than this is not one of this request's router: Heroku's router
/// gives up on a request after 30 seconds, and no queue in front of molt holds one for
/// an hour. Such a value (a client's own header, a clock set wrong) is not counted.
const LONGEST_QUEUE: Duration = Duration::from_secs(3600);

/// When the request entered the router, as the header's first value says, since the
/// Unix epoch. A whole number's unit follows from its size: seconds below 10^11 (until
/// the year 5138), then milliseconds below 10^14, microseconds below 10^17, else
/// nanoseconds; a number with a fraction is the same, read as a decimal.
pub(crate) fn parse(value: &str) -> Option<Duration> {
    // Two proxies that each appended a stamp: the first is the outermost, the router.
    let first = value.split(',').next()?.trim();
    let number = first.strip_prefix("t=").unwrap_or(first).trim();
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let unit_ns: u128 = match whole {
        0..100_000_000_000 => 1_000_000_000,
        100_000_000_000..100_000_000_000_000 => 1_000_000,
        100_000_000_000_000..100_000_000_000_000_000 => 1_000,
        _ => 1,
    };
    // The fraction to nine digits, in billionths of the unit.
    let mut billionths: u128 = 0;
    for digit in fraction.bytes().chain(std::iter::repeat(b'0')).take(9) {
        billionths = billionths * 10 + u128::from(digit - b'0');
    }
    let ns = u128::from(whole) * unit_ns + billionths * unit_ns / 1_000_000_000;
    Some(Duration::from_nanos(u64::try_from(ns).ok()?))
}

/// How long the request waited before molt received it at `now`; a stamp slightly
/// ahead of molt's clock (the router's clock is another machine's) is no wait at all.
/// `None` when the header is not a stamp molt can read, or is not this request's.
pub(crate) fn queue_time(value: &str, now: SystemTime) -> Option<Duration> {
    let started = UNIX_EPOCH + parse(value)?;
    let waited = now.duration_since(started).unwrap_or(Duration::ZERO);
    (waited <= LONGEST_QUEUE).then_some(waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2014-08-13 15:33:54.295123456 UTC, in every unit.
    const SECS: u64 = 1_407_944_034;

    #[test]
    fn reads_every_common_form() {
        let at = |nanos| Some(Duration::from_nanos(nanos));
        let ns = SECS * 1_000_000_000;
        // Heroku's router: whole milliseconds, no prefix.
        assert_eq!(parse("1407944034295"), at(ns + 295_000_000));
        // nginx's `t=${msec}`: seconds with a fraction of milliseconds.
        assert_eq!(parse("t=1407944034.295"), at(ns + 295_000_000));
        // Apache's `t=%t`: microseconds.
        assert_eq!(parse("t=1407944034295123"), at(ns + 295_123_000));
        // Nanoseconds, with or without the prefix.
        assert_eq!(parse("1407944034295123456"), at(ns + 295_123_456));
        assert_eq!(parse("t=1407944034295123456"), at(ns + 295_123_456));
        // Whole seconds, and seconds with a finer fraction.
        assert_eq!(parse("t=1407944034"), at(ns));
        assert_eq!(parse("1407944034.295123"), at(ns + 295_123_000));
        assert_eq!(parse("t=1407944034.2951234567"), at(ns + 295_123_456));
        // Milliseconds with a fraction, and spaces around the value.
        assert_eq!(parse(" t=1407944034295.5 "), at(ns + 295_500_000));
        // The first of two appended stamps.
        assert_eq!(
            parse("1407944034295, t=1407944035000000"),
            at(ns + 295_000_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_stamp() {
        for value in [
            "",
            "t=",
            "abc",
            "t=abc",
            "-1407944034295",
            "1407944034.2.95",
            "1e12",
            "t = 5",
            "t=1407944034295 extra",
            "NaN",
            "inf",
        ] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn queue_time_is_the_age_of_the_stamp() {
        let now = UNIX_EPOCH + Duration::from_millis(SECS * 1000 + 295 + 42);
        assert_eq!(
            queue_time("1407944034295", now),
            Some(Duration::from_millis(42))
        );
        assert_eq!(
            queue_time("t=1407944034295000", now),
            Some(Duration::from_millis(42))
        );
        // A router clock a little ahead of molt's: no wait, not a negative one.
        assert_eq!(queue_time("1407944034400", now), Some(Duration::ZERO));
        // Older than any queue holds a request: not this request's router.
        assert_eq!(queue_time("t=1000", now), None);
        assert_eq!(queue_time("1407940000000", now), None);
        assert_eq!(queue_time("garbage", now), None);
    }
}
