//! Stop strings in a growing answer: what may be sent now, and whether the answer ended. Text
//! that could still become a stop string is held back, so a client never sees half of one.

/// What to do with the text generated and not yet sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Send the first `n` bytes; keep the rest until more text comes.
    Send(usize),
    /// A stop string begins at byte `n`: send what is before it and end the answer.
    Stop(usize),
}

/// Scans `pending` (generated, not yet sent) for `stops`.
pub fn scan(pending: &str, stops: &[String]) -> Scan {
    if let Some(at) = stops.iter().filter_map(|s| pending.find(s.as_str())).min() {
        return Scan::Stop(at);
    }
    // The longest tail of `pending` that begins some stop string must wait.
    let held = stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k) && k <= pending.len() && pending.ends_with(&s[..k]))
                .take(1)
        })
        .max()
        .unwrap_or(0);
    let mut send = pending.len() - held;
    while !pending.is_char_boundary(send) {
        send -= 1;
    }
    Scan::Send(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_stop_string_ends_the_answer_before_it() {
        assert_eq!(scan("Paris.\nUser:", &stops(&["User:"])), Scan::Stop(7));
        // The earliest of several wins.
        assert_eq!(scan("a END b STOP", &stops(&["STOP", "END"])), Scan::Stop(2));
    }

    #[test]
    fn what_may_begin_a_stop_string_waits() {
        assert_eq!(scan("Paris.\nUs", &stops(&["User:"])), Scan::Send(7));
        assert_eq!(scan("Paris.", &stops(&["User:"])), Scan::Send(6));
        assert_eq!(scan("Paris.", &[]), Scan::Send(6));
        // Never inside a character: "é" is two bytes and the stop begins with its first.
        let odd = stops(&["\u{e9}x"]);
        assert_eq!(scan("caf\u{e9}", &odd), Scan::Send(3));
        // A stop string's prefixes are cut at its own character boundaries, never inside one.
        assert_eq!(scan("cafe", &odd), Scan::Send(4));
        assert_eq!(scan("x\u{e9}", &stops(&["\u{e9}\u{e9}"])), Scan::Send(1));
    }
}
