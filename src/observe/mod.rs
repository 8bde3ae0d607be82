//! What molt says about itself: logfmt event lines on stdout, the control socket, and
//! the status report it answers with.
//!
//! Every line starts with `molt at=<event>` so that it stands out among the app's own
//! output (which passes through untouched) and so that log drains can filter on it.

/// The Unix socket `molt status` and `molt restart` talk to.
pub(crate) mod control;
/// The opt-in Prometheus listener (`MOLT_METRICS_LISTEN`): request histograms, the pool.
pub(crate) mod metrics;
/// The pool's state for `molt status`: the report and its table and JSON forms.
pub(crate) mod status;

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the least severe level that is printed.
pub(crate) fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are printed.
pub(crate) fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Writes one whole line to stdout in a single write, so that it does not interleave
/// with lines the workers write to the same pipe.
pub(crate) fn emit(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // A closed stdout must not take the proxy down with it: the log is best effort.
    let _ = std::io::stdout().lock().write_all(&bytes);
}

/// A logfmt value: bare when it is a simple token, quoted and escaped otherwise.
pub(crate) struct Value<'a, T: Display + ?Sized>(pub &'a T);

impl<T: Display + ?Sized> Display for Value<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let bare = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
        if bare {
            return f.write_str(&text);
        }
        f.write_char('"')?;
        for c in text.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Logs one event line: `event!(Info, "ready", worker = id, pid = pid)`.
macro_rules! event {
    ($level:ident, $at:expr $(, $key:ident = $value:expr)* $(,)?) => {
        if $crate::observe::enabled($crate::config::LogLevel::$level) {
            #[allow(unused_mut)]
            let mut line = format!("molt at={}", $at);
            $(
                {
                    use std::fmt::Write as _;
                    let _ = write!(line, " {}={}", stringify!($key), $crate::observe::Value(&$value));
                }
            )*
            $crate::observe::emit(&line);
        }
    };
}
pub(crate) use event;

#[cfg(test)]
mod tests {
    use super::Value;

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(Value(&"ready").to_string(), "ready");
        assert_eq!(Value(&42).to_string(), "42");
        assert_eq!(Value(&"").to_string(), "\"\"");
        assert_eq!(Value(&"exit 1").to_string(), "\"exit 1\"");
        assert_eq!(Value(&"a=b").to_string(), "\"a=b\"");
        assert_eq!(Value(&"say \"hi\"\n").to_string(), "\"say \\\"hi\\\"\\n\"");
    }
}
