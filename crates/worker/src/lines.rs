//! The lines of a command's output, in bounded memory. The agent passes the output through as
//! it reads it and keeps only the current line, to look for `::nightshift::` directives. A
//! command that prints a `\r` progress bar, or binary data, may never end a line: past
//! [`MAX_LINE_BYTES`] the line is no longer kept (its bytes were passed through already), and
//! the agent waits for the next line.

/// Longest line the agent looks at for a directive, its newline included. Directives are far
/// shorter: a result is at most 4 KiB of JSON, a checkpoint 1 KiB.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The line being read, up to a cap.
pub struct LineBuffer {
    line: Vec<u8>,
    cap: usize,
    /// The current line outgrew the cap: its remaining bytes are skipped up to its newline.
    overlong: bool,
    /// The most bytes ever kept at once.
    high_water: usize,
}

/// A line, as [`LineBuffer::push`] and [`LineBuffer::finish`] hand it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line (with its newline, unless the output ended without one).
    Whole(&'a [u8]),
    /// A line longer than the cap, now complete: its first `cap` bytes, so that the caller can
    /// tell why it is not read as a directive.
    Overlong(&'a [u8]),
}

impl LineBuffer {
    pub fn new(cap: usize) -> Self {
        // Allocated once: a line never grows past the cap, so the buffer never grows either.
        Self { line: Vec::with_capacity(cap), cap, overlong: false, high_water: 0 }
    }

    /// Takes the next bytes of output and calls `on_line` with every line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|b| *b == b'\n').map(|i| i + 1);
            let (piece, rest) = bytes.split_at(end.unwrap_or(bytes.len()));
            bytes = rest;
            self.keep(piece);
            if end.is_some() {
                self.hand_over(&mut on_line);
            }
        }
    }

    /// The output ended: the last line, if it had no newline.
    pub fn finish(&mut self, on_line: impl FnMut(Line<'_>)) {
        if !self.line.is_empty() {
            self.hand_over(on_line);
        }
    }

    /// The most bytes this buffer held at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    fn keep(&mut self, piece: &[u8]) {
        if self.overlong {
            return;
        }
        let room = self.cap - self.line.len();
        if piece.len() > room {
            // The start is kept, to say what the line was; the rest is not.
            self.line.extend_from_slice(&piece[..room]);
            self.overlong = true;
        } else {
            self.line.extend_from_slice(piece);
        }
        self.high_water = self.high_water.max(self.line.len());
    }

    fn hand_over(&mut self, mut on_line: impl FnMut(Line<'_>)) {
        if std::mem::take(&mut self.overlong) {
            on_line(Line::Overlong(&self.line));
        } else {
            on_line(Line::Whole(&self.line));
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line `chunks` make, as text, overlong ones marked.
    fn lines(cap: usize, chunks: &[&[u8]]) -> (Vec<String>, usize) {
        let mut buffer = LineBuffer::new(cap);
        let mut seen = Vec::new();
        let mut collect = |line: Line<'_>| {
            seen.push(match line {
                Line::Whole(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::Overlong(bytes) => format!("OVERLONG {}", String::from_utf8_lossy(bytes)),
            })
        };
        for chunk in chunks {
            buffer.push(chunk, &mut collect);
        }
        buffer.finish(&mut collect);
        (seen, buffer.high_water())
    }

    #[test]
    fn lines_are_whole_across_reads() {
        let (seen, high_water) = lines(64, &[b"one\ntw", b"o\n", b"", b"\nthree"]);
        assert_eq!(seen, ["one\n", "two\n", "\n", "three"]);
        assert_eq!(high_water, 5);
    }

    #[test]
    fn a_line_past_the_cap_is_cut_and_the_next_one_is_whole_again() {
        let (seen, high_water) = lines(8, &[b"0123456", b"789abc", b"def\nshort\n", b"0123456789"]);
        assert_eq!(seen, ["OVERLONG 01234567", "short\n", "OVERLONG 01234567"]);
        assert_eq!(high_water, 8);
        // Exactly the cap, newline included, is still a whole line.
        assert_eq!(lines(8, &[b"0123456\n"]).0, ["0123456\n"]);
        assert_eq!(lines(8, &[b"01234567\n"]).0, ["OVERLONG 01234567"]);
    }

    #[test]
    fn the_buffer_never_grows_past_the_cap() {
        let mut buffer = LineBuffer::new(1024);
        let mut count = 0;
        for _ in 0..1000 {
            buffer.push(&[b'x'; 4096], |_| count += 1);
        }
        buffer.push(b"\n", |_| count += 1);
        assert_eq!((count, buffer.high_water()), (1, 1024));
        assert_eq!(buffer.line.capacity(), 1024, "allocated once");
    }
}
