//! Sizes, durations and percentages as users write them and logs show them: the one
//! place that parses `512MB` or `1m30s` and formats a byte count or a duration for people,
//! for settings, the budget, log lines and `molt status`.

use std::time::Duration;

/// `percent`% of `bytes`, rounded down; computed in `u128`, so it cannot overflow, and
/// saturating for percentages above 100.
pub(crate) fn percent_of(bytes: u64, percent: u8) -> u64 {
    let part = u128::from(bytes) * u128::from(percent) / 100;
    u64::try_from(part).unwrap_or(u64::MAX)
}

/// Parses a duration: `250ms`, `30s`, `5m`, `1h`, `1m30s` (anything humantime takes), or a
/// plain number of seconds such as `30` or `0.5`. Negative, empty and non-finite values are
/// rejected; the error says why, for callers that want more than the accepted form.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let is_plain_number = text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    if is_plain_number {
        // Digits and at most one dot always parse; the only failure left is overflow.
        let seconds: f64 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        return Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too long"));
    }
    humantime::parse_duration(text).map_err(|err| err.to_string())
}

/// The compact form of a duration for logs and `molt plan`: `25s`, `1m30s`, `250ms`.
pub(crate) fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// Size units, lowercase, and their multipliers. Units are binary: `MB` is `MiB`, 1024 * 1024
/// bytes, as Heroku's dyno sizes (512MB) and the JVM's `-Xmx512m` mean them, so a size
/// copied from either means what it meant there.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kb", 1 << 10),
    ("kib", 1 << 10),
    ("m", 1 << 20),
    ("mb", 1 << 20),
    ("mib", 1 << 20),
    ("g", 1 << 30),
    ("gb", 1 << 30),
    ("gib", 1 << 30),
    ("t", 1 << 40),
    ("tb", 1 << 40),
    ("tib", 1 << 40),
];

/// Most decimal places a size may have; more would be finer than a byte for any unit.
const SIZE_MAX_DECIMALS: usize = 12;

/// Parses a size: `512MB`, `512M`, `512MiB`, `0.5GB`, `100kb`, `512 MB`, or plain bytes
/// `1048576`. Units are case-insensitive and binary (see [`SIZE_UNITS`]); a fraction of a
/// byte is rounded down. Negative, empty, unit-only, unknown units and sizes beyond `u64`
/// are rejected, with the reason as the error.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, rest) = text.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} does not start with a number"));
    }
    // One space may separate the number and its unit, as in `512 MB`; a space with no unit
    // after it is a typo.
    let unit = match rest.strip_prefix(' ') {
        Some("") => return Err(format!("{text:?} has a space but no unit")),
        Some(unit) => unit,
        None => rest,
    };
    let multiplier = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, multiplier)| multiplier)
        .ok_or_else(|| format!("{unit:?} is not a size unit (use B, KB, MB, GB or TB)"))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') {
        return Err(format!("{number:?} is not a number"));
    }
    if !fraction.is_empty() && multiplier == 1 {
        return Err(format!("{text:?} is not a whole number of bytes"));
    }
    if fraction.len() > SIZE_MAX_DECIMALS {
        return Err(format!("{text:?} has too many decimal places"));
    }
    let too_large = || format!("{text:?} is too large");
    // Integer arithmetic in u128, so `0.5GB` is exactly half a GiB and overflow is checked.
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| too_large())?;
        let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| too_large())?);
        bytes += digits * u128::from(multiplier) / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// A size for logs: the largest binary unit it reaches, with up to two decimals and none
/// when exact, e.g. `512MB`, `1.5GB`, `900KB`, `12B`. [`parse_size`] reads it back.
pub(crate) fn format_size(bytes: u64) -> String {
    const UNITS: &[(&str, u64)] = &[
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ];
    let Some(&(name, unit)) = UNITS.iter().find(|&&(_, unit)| bytes >= unit) else {
        return format!("{bytes}B");
    };
    let unit = u128::from(unit);
    let hundredths = (u128::from(bytes) * 100 + unit / 2) / unit;
    let (whole, fraction) = (hundredths / 100, hundredths % 100);
    match fraction {
        0 => format!("{whole}{name}"),
        f if f % 10 == 0 => format!("{whole}.{}{name}", f / 10),
        f => format!("{whole}.{f:02}{name}"),
    }
}

/// A byte count with its sign, for growth rates such as a worker's memory per request:
/// `-1.5MB`, `900KB`. Rounded to whole bytes, then shown as [`format_size`] shows them.
pub(crate) fn format_signed_size(bytes: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rate for people to read: the magnitude, rounded, is far below u64::MAX"
    )]
    let magnitude = format_size(bytes.abs().round() as u64);
    if bytes < 0.0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_forms() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(ms(250))),
            ("30s", Some(ms(30_000))),
            ("5m", Some(ms(300_000))),
            ("1h", Some(ms(3_600_000))),
            ("1m30s", Some(ms(90_000))),
            ("30", Some(ms(30_000))),
            ("0.5", Some(ms(500))),
            ("0", Some(ms(0))),
            ("", None),
            ("-5s", None),
            ("-1", None),
            ("NaN", None),
            ("inf", None),
            ("1.2.3", None),
            (".", None),
            ("soon", None),
            ("5 parsecs", None),
            ("99999999999999999999999", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text:?}");
        }
    }

    #[test]
    fn parse_size_forms() {
        const MIB: u64 = 1 << 20;
        let cases: &[(&str, Option<u64>)] = &[
            ("512MB", Some(536_870_912)),
            ("512M", Some(512 * MIB)),
            ("512mb", Some(512 * MIB)),
            ("512MiB", Some(512 * MIB)),
            ("512 MB", Some(512 * MIB)),
            ("0.5GB", Some(512 * MIB)),
            ("1.5GB", Some(1536 * MIB)),
            ("1G", Some(1 << 30)),
            ("100KB", Some(102_400)),
            ("100kb", Some(102_400)),
            ("1048576", Some(1_048_576)),
            ("1048576B", Some(1_048_576)),
            ("1TB", Some(1 << 40)),
            ("0", Some(0)),
            // A fraction of a byte is rounded down: 0.3 MiB is 314572.8 bytes.
            ("0.3MB", Some(314_572)),
            ("-1MB", None),
            ("12XB", None),
            ("", None),
            ("MB", None),
            (".MB", None),
            ("1.5", None),
            ("1.2.3MB", None),
            ("512  MB", None),
            ("512 ", None),
            ("512MB ", None),
            (" 512MB", None),
            ("99999999999999GB", None),
            ("18446744073709551616", None),
            ("99999999999999999999999999999999999999999", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_size(text).ok(), expected, "{text:?}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_size("12XB"),
            Err("\"XB\" is not a size unit (use B, KB, MB, GB or TB)".to_owned())
        );
    }

    #[test]
    fn format_size_is_short_and_reads_back() {
        let cases: &[(u64, &str)] = &[
            (0, "0B"),
            (900, "900B"),
            (921_600, "900KB"),
            (536_870_912, "512MB"),
            (1_610_612_736, "1.5GB"),
            (1 << 30, "1GB"),
            (1_234_567, "1.18MB"),
            (1 << 40, "1TB"),
        ];
        for &(bytes, text) in cases {
            assert_eq!(format_size(bytes), text, "{bytes}");
        }
        for bytes in [0, 900, 921_600, 536_870_912, 1_610_612_736, 1 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn signed_sizes_keep_their_sign() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0B"),
            (9318.4, "9.1KB"),
            (-9318.4, "-9.1KB"),
            (65_431_142.4, "62.4MB"),
            (-1_572_864.0, "-1.5MB"),
            (0.4, "0B"),
        ];
        for &(bytes, text) in cases {
            assert_eq!(format_signed_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn percent_of_rounds_down_and_saturates() {
        // 45% of 512MB is 241591910.4 bytes.
        assert_eq!(percent_of(536_870_912, 45), 241_591_910);
        assert_eq!(percent_of(99, 1), 0);
        assert_eq!(percent_of(u64::MAX, 100), u64::MAX);
        assert_eq!(percent_of(u64::MAX, 50), u64::MAX / 2);
        assert_eq!(percent_of(u64::MAX, 200), u64::MAX);
    }
}

/// Property tests of the parsers: arbitrary input never panics, every error is one line,
/// and valid generated input reads back as the value it was made from.
#[cfg(test)]
pub(crate) mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Cases per property: the parsers take ~1000 in well under a second.
    const PURE_CASES: u32 = 1000;

    /// Text that looks like a size or a duration: digits, dots, signs, spaces and unit
    /// letters in any order, which reaches the parsers' deeper branches more often than
    /// arbitrary text does.
    pub(crate) fn number_like() -> impl Strategy<Value = String> {
        "[-+0-9. ]{0,24}[a-zA-Z ]{0,6}[0-9]{0,3}"
    }

    /// A size unit as a user might write it, in any case.
    fn unit() -> impl Strategy<Value = (&'static str, u64, bool)> {
        (prop::sample::select(SIZE_UNITS), any::<bool>())
            .prop_map(|((name, multiplier), upper)| (name, multiplier, upper))
    }

    /// A message for a user: one line, not empty.
    pub(crate) fn assert_one_line(message: &str) {
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{message:?}"
        );
    }

    /// Both parsers on `text`: each parses it or says why in one line.
    fn parse_or_explain_in_one_line(text: &str) {
        if let Err(message) = parse_size(text) {
            assert_one_line(&message);
        }
        if let Err(message) = parse_duration(text) {
            assert_one_line(&message);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(PURE_CASES))]

        #[test]
        fn parsers_never_panic(text in any::<String>()) {
            parse_or_explain_in_one_line(&text);
        }

        #[test]
        fn parsers_never_panic_on_number_like_text(text in number_like()) {
            parse_or_explain_in_one_line(&text);
        }

        #[test]
        fn plain_bytes_read_back(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
        }

        #[test]
        fn whole_sizes_in_any_unit_read_back(
            n in 0u64..(1 << 23),
            (name, multiplier, upper) in unit(),
            space in any::<bool>(),
        ) {
            let name = if upper { name.to_ascii_uppercase() } else { name.to_owned() };
            let space = if space && !name.is_empty() { " " } else { "" };
            prop_assert_eq!(parse_size(&format!("{n}{space}{name}")), Ok(n * multiplier));
        }

        #[test]
        fn fractional_sizes_round_down_to_a_byte(
            whole in 0u64..1024,
            thousandths in 0u64..1000,
            (name, multiplier, _) in unit().prop_filter("a fraction of a byte is an error", |u| u.1 > 1),
        ) {
            let expected = whole * multiplier + thousandths * multiplier / 1000;
            prop_assert_eq!(parse_size(&format!("{whole}.{thousandths:03}{name}")), Ok(expected));
        }

        #[test]
        fn sizes_beyond_u64_are_errors(n in (u128::from(u64::MAX) + 1)..u128::MAX) {
            let in_kib = format!("{}KB", n >> 10);
            prop_assert!(parse_size(&n.to_string()).is_err());
            prop_assert!(parse_size(&in_kib).is_err());
        }

        #[test]
        fn negative_sizes_are_errors(n in 1u64.., (name, _, _) in unit()) {
            let text = format!("-{n}{name}");
            prop_assert!(parse_size(&text).is_err());
        }

        #[test]
        fn format_size_reads_back_within_its_rounding(bytes in any::<u64>()) {
            let shown = format_size(bytes);
            let back = parse_size(&shown).unwrap();
            // Two decimals of the unit shown: off by at most half a hundredth of it.
            let unit = [1u64 << 40, 1 << 30, 1 << 20, 1 << 10]
                .into_iter()
                .find(|&unit| bytes >= unit)
                .unwrap_or(1);
            let tolerance = if unit == 1 { 0 } else { unit / 200 + 1 };
            prop_assert!(back.abs_diff(bytes) <= tolerance, "{bytes} -> {shown} -> {back}");
        }

        #[test]
        fn plain_seconds_read_back(seconds in 0u64..(1 << 40)) {
            prop_assert_eq!(parse_duration(&seconds.to_string()), Ok(Duration::from_secs(seconds)));
        }

        #[test]
        fn durations_with_a_unit_read_back(n in 0u64..(1 << 30), unit in 0usize..4) {
            let (suffix, expected) = [
                ("ms", Duration::from_millis(n)),
                ("s", Duration::from_secs(n)),
                ("m", Duration::from_secs(n * 60)),
                ("h", Duration::from_secs(n * 3600)),
            ][unit];
            prop_assert_eq!(parse_duration(&format!("{n}{suffix}")), Ok(expected));
        }

        #[test]
        fn format_duration_reads_back(millis in 0u64..(1 << 42)) {
            let duration = Duration::from_millis(millis);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn negative_durations_are_errors(n in 1u64..(1 << 40), unit in prop::sample::select(&["", "s", "ms", "m"])) {
            let text = format!("-{n}{unit}");
            prop_assert!(parse_duration(&text).is_err());
        }
    }
}
