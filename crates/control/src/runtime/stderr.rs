//! An instance process's stderr, logged by the server. Code that took an instance over writes
//! there what it likes, so the instance gets a pipe, never the server's own stderr (a file it
//! could chmod, truncate or write at offset 0): the server reads it on a task until EOF (the
//! instance's exit closes it), cuts it into lines ([`Lines`]: each cleaned of control characters
//! and escape sequences, and cut to a length), keeps at most so many per second ([`Rate`],
//! counting the others), and logs each through `tracing` tagged with the instance's id.

use selfcloud_core::config::InstanceLog;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Ends a line that was cut.
pub const CUT_MARKER: &str = " [cut]";

/// Raw bytes of a line kept before it is cleaned: escape sequences shrink in cleaning, so a line
/// may take more raw bytes than it is allowed in the log, but not without bound.
const RAW_FACTOR: usize = 4;

/// Turns an instance's raw stderr, read in chunks of any size, into lines to log.
pub struct Lines {
    max: usize,
    line: Vec<u8>,
    /// The line under way was already logged, cut: the rest of it, up to its newline, is dropped.
    skipping: bool,
}

impl Lines {
    /// Lines of at most `max` bytes, the cut marker included.
    pub fn new(max: usize) -> Self {
        Lines { max, line: Vec::new(), skipping: false }
    }

    /// The lines `bytes` ends (or that grew past what is kept of a line), cleaned and cut; empty
    /// ones are left out.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let keep = self.max.saturating_mul(RAW_FACTOR).max(1);
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ended) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.skipping {
                let room = keep - self.line.len();
                self.line.extend_from_slice(&body[..body.len().min(room)]);
                if body.len() > room {
                    out.extend(self.take(true));
                    self.skipping = true;
                }
            }
            if ended {
                if !self.skipping {
                    out.extend(self.take(false));
                }
                self.skipping = false;
            }
        }
        out
    }

    /// The last line, once the pipe has closed without a newline after it.
    pub fn finish(&mut self) -> Option<String> {
        if self.skipping {
            return None;
        }
        self.take(false)
    }

    fn take(&mut self, cut: bool) -> Option<String> {
        let line = clean(&self.line, self.max, cut);
        self.line.clear();
        (!line.trim().is_empty()).then_some(line)
    }
}

/// One raw line as it may be logged: invalid UTF-8 replaced, every escape sequence (ANSI CSI,
/// OSC, DCS and the like, 7- and 8-bit) and control character removed (a tab becomes a space),
/// and so are the characters that reorder or break what a viewer shows (bidi controls, line and
/// paragraph separators); then cut to `max` bytes, marker included, if it is longer or `cut`.
pub fn clean(raw: &[u8], max: usize, cut: bool) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len().min(max));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    skip_string(&mut chars);
                }
                Some(' '..='/') => {
                    // Intermediates, then one final character (`ESC ( B`).
                    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
                    chars.next_if(|c| matches!(c, '0'..='~'));
                }
                Some('0'..='~') => {
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\t' => out.push(' '),
            c if c.is_control() || hidden(c) => {}
            c => out.push(c),
        }
    }
    if cut || out.len() > max {
        let mut end = max.saturating_sub(CUT_MARKER.len()).min(out.len());
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str(CUT_MARKER);
    }
    out
}

/// Characters that change how the text around them is shown rather than show themselves.
fn hidden(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The rest of a control sequence: parameters and intermediates, up to its final character.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(&c) = chars.peek() {
        match c {
            '@'..='~' => {
                chars.next();
                return;
            }
            ' '..='?' => {
                chars.next();
            }
            // Anything else ends it unfinished, and is dealt with as itself.
            _ => return,
        }
    }
}

/// The rest of a string sequence (OSC, DCS, ...): up to BEL or the string terminator.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\x07' | '\u{9c}' => return,
            '\x1b' if chars.peek() == Some(&'\\') => {
                chars.next();
                return;
            }
            _ => {}
        }
    }
}

/// A token bucket of lines per second for one instance: a second's worth may come at once.
pub struct Rate {
    per_sec: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
    reported: Instant,
}

/// How often at most the count of dropped lines is logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

impl Rate {
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Rate { per_sec, tokens: per_sec, last: now, dropped: 0, reported: now }
    }

    /// Whether a line that came at `now` is logged; the ones that are not are counted.
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The lines dropped since the last count taken, once a second at most (at any time when
    /// `last`: the pipe has closed); `None` when there is nothing to say yet.
    pub fn dropped(&mut self, now: Instant, last: bool) -> Option<u64> {
        if self.dropped == 0 || !(last || now.saturating_duration_since(self.reported) >= SUMMARY_EVERY) {
            return None;
        }
        self.reported = now;
        Some(std::mem::take(&mut self.dropped))
    }
}

/// Whose stderr it is: an instance's id, or the shared engine's name.
pub trait Who: std::fmt::Display + Copy + Send + 'static {}
impl<T: std::fmt::Display + Copy + Send + 'static> Who for T {}

/// Logs `id`'s stderr until it closes (the instance and its reaper have exited).
pub fn spawn(id: impl Who, pipe: impl AsyncRead + Unpin + Send + 'static, settings: InstanceLog) {
    tokio::spawn(read(id, pipe, settings));
}

async fn read(id: impl Who, mut pipe: impl AsyncRead + Unpin, settings: InstanceLog) {
    let mut lines = Lines::new(settings.line_max);
    let mut rate = Rate::new(settings.lines_per_sec, Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    for line in lines.push(&buf[..n]) {
                        log(id, &mut rate, &line);
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "reading the instance's stderr failed");
                    break;
                }
            },
            _ = tick.tick() => summary(id, &mut rate, false),
        }
    }
    if let Some(line) = lines.finish() {
        log(id, &mut rate, &line);
    }
    summary(id, &mut rate, true);
}

fn log(id: impl Who, rate: &mut Rate, line: &str) {
    let now = Instant::now();
    if rate.admit(now) {
        summary(id, rate, false);
        // Warn: the instance logs only its warnings unless RUST_LOG says more.
        tracing::warn!(instance = %id, "{line}");
    }
}

fn summary(id: impl Who, rate: &mut Rate, last: bool) {
    if let Some(n) = rate.dropped(Instant::now(), last) {
        tracing::warn!(instance = %id, dropped = n, "{n} lines of instance {id} dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut l = Lines::new(max);
        let mut out: Vec<String> = chunks.iter().flat_map(|c| l.push(c)).collect();
        out.extend(l.finish());
        out
    }

    #[test]
    fn splits_on_newlines_across_chunks_and_keeps_the_last_unended_line() {
        assert_eq!(lines(64, &[b"one\ntw", b"o\n\n", b"three"]), ["one", "two", "three"]);
        assert_eq!(lines(64, &[b"a\r\n", b"\x1b[0m\n", b"b"]), ["a", "b"], "empty once cleaned: left out");
    }

    #[test]
    fn removes_escape_sequences_and_control_characters() {
        let raw = "\x1b[31mred\x1b[0m \x1b]0;title\x07osc \x1b]8;;http://x.invalid/\x1b\\link\x1b]8;;\x1b\\ \
                   \x1b(Bcharset \x1bcreset cr\rnul\0bs\x08del\x7f c1\u{9b}2Jcsi \u{9d}osc\u{9c}end tab\tx";
        assert_eq!(clean(raw.as_bytes(), 4096, false), "red osc link charset reset crnulbsdel c1csi end tab x");
        assert_eq!(clean("bidi\u{202e}txt\u{2028}sep".as_bytes(), 4096, false), "biditxtsep");
        // An unfinished sequence at the end goes too.
        assert_eq!(clean(b"text\x1b[38;5", 4096, false), "text");
        assert_eq!(clean(b"text\x1b]0;never ended", 4096, false), "text");
        assert_eq!(clean(b"text\x1b", 4096, false), "text");
    }

    #[test]
    fn replaces_invalid_utf8() {
        assert_eq!(clean(b"ok \xff\xfe \xc3\xa9", 4096, false), "ok \u{fffd}\u{fffd} \u{e9}");
    }

    #[test]
    fn cuts_a_long_line_with_a_marker_within_the_cap_and_drops_its_rest() {
        let long = vec![b'L'; 10_000];
        let out = lines(64, &[&long, &long, b" tail\nnext\n"]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].len(), 64);
        assert!(out[0].starts_with("LLLL") && out[0].ends_with(CUT_MARKER), "{}", out[0]);
        assert_eq!(out[1], "next");
        // Exactly the cap: not cut.
        assert_eq!(clean(&[b'a'; 64], 64, false), "a".repeat(64));
        // Cut on a character boundary.
        let cut = clean("é".repeat(100).as_bytes(), 64, false);
        assert!(cut.len() <= 64 && cut.ends_with(CUT_MARKER), "{cut}");
        // A line of escapes that cleans down to fit is kept whole.
        let coloured = "\x1b[31mx\x1b[0m".repeat(20);
        assert_eq!(lines(64, &[coloured.as_bytes(), b"\n"]), ["x".repeat(20)]);
    }

    #[test]
    fn a_line_never_ended_is_logged_once_it_outgrows_what_is_kept() {
        let mut l = Lines::new(64);
        assert!(l.push(&[b'x'; 200]).is_empty());
        let out = l.push(&[b'x'; 200]);
        assert_eq!(out.len(), 1);
        assert!(l.push(&[b'x'; 10_000]).is_empty(), "its rest is dropped");
        assert_eq!(l.finish(), None);
    }

    #[test]
    fn rate_lets_a_seconds_worth_through_then_refills_and_counts_the_dropped() {
        let t0 = Instant::now();
        let mut rate = Rate::new(10, t0);
        let admitted = (0..100).filter(|_| rate.admit(t0)).count();
        assert_eq!(admitted, 10);
        assert_eq!(rate.dropped(t0, false), None, "not before a second since the last count");
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..100).filter(|_| rate.admit(t1)).count(), 5, "half a second refills half");
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(rate.dropped(t2, false), Some(185));
        assert_eq!(rate.dropped(t2 + Duration::from_secs(5), false), None, "nothing new dropped");
        // Long idle refills no more than a second's worth.
        let t3 = t0 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| rate.admit(t3)).count(), 10);
        assert_eq!(rate.dropped(t3, true), Some(90), "the last count, whenever the pipe closes");
    }
}
