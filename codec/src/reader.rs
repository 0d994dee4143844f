//! A bounds-checked cursor over one frame: every read either succeeds or returns
//! [`DecodeError::Malformed`], never panics, and strings and binary data come out as
//! zero-copy slices of the frame.

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::DecodeError;

/// Largest value a Variable Byte Integer can hold (MQTT 5.0 section 1.5.5).
pub(crate) const VBI_MAX: u32 = 268_435_455;

const TRUNCATED: DecodeError = DecodeError::Malformed("packet truncated");

/// Outcome of reading a Variable Byte Integer from the front of a slice.
pub(crate) enum Vbi {
    /// The value and how many bytes encoded it.
    Done(u32, usize),
    /// The slice ended before the last byte.
    Incomplete,
    /// A fifth byte would be needed.
    TooLong,
}

/// Reads a Variable Byte Integer from the front of `src`. Non-minimal encodings are
/// accepted: the spec asks senders for the minimum but does not ask receivers to check.
#[inline]
pub(crate) fn read_vbi(src: &[u8]) -> Vbi {
    let mut value: u32 = 0;
    for (i, &b) in src.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Vbi::Done(value, i + 1);
        }
    }
    // MQTT 3.1.1 [MQTT-2.2.3] / 5.0 section 1.5.5: at most four bytes.
    if src.len() >= 4 {
        Vbi::TooLong
    } else {
        Vbi::Incomplete
    }
}

/// Cursor over a frame. Reads stop at `end`, which a property block narrows for its
/// duration; `pos <= end <= buf.len()` always holds.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    end: usize,
}

impl Reader {
    /// A cursor at `pos` in `buf`.
    pub(crate) fn new(buf: Bytes, pos: usize) -> Self {
        let end = buf.len();
        Reader {
            buf,
            pos: pos.min(end),
            end,
        }
    }

    /// Bytes left to read before the current limit.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    /// Narrows reads to the next `n` bytes; returns the limit to give back to
    /// [`Reader::unlimit`] once they are consumed.
    #[inline]
    pub(crate) fn limit(&mut self, n: usize) -> Result<usize, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Malformed("length exceeds the packet"));
        }
        let old = self.end;
        self.end = self.pos + n;
        Ok(old)
    }

    /// Restores the limit [`Reader::limit`] returned.
    #[inline]
    pub(crate) fn unlimit(&mut self, old: usize) {
        self.end = old.clamp(self.pos, self.buf.len());
    }

    #[inline]
    fn end_of(&self, n: usize) -> Result<usize, DecodeError> {
        match self.pos.checked_add(n) {
            Some(e) if e <= self.end => Ok(e),
            _ => Err(TRUNCATED),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.end_of(N)?;
        let slice = self.buf.get(self.pos..end).ok_or(TRUNCATED)?;
        let arr: [u8; N] = slice.try_into().map_err(|_| TRUNCATED)?;
        self.pos = end;
        Ok(arr)
    }

    /// One byte.
    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let end = self.end_of(1)?;
        let b = *self.buf.get(self.pos).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(b)
    }

    /// A big-endian Two Byte Integer.
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    /// A big-endian Four Byte Integer.
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    /// A Variable Byte Integer.
    #[inline]
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let rest = self.buf.get(self.pos..self.end).ok_or(TRUNCATED)?;
        match read_vbi(rest) {
            Vbi::Done(v, n) => {
                self.pos += n;
                Ok(v)
            }
            Vbi::Incomplete => Err(TRUNCATED),
            Vbi::TooLong => Err(DecodeError::Malformed(
                "variable byte integer longer than 4 bytes",
            )),
        }
    }

    /// The next `n` bytes as a slice of the frame.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.end_of(n)?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// The next `n` bytes, borrowed.
    #[inline]
    pub(crate) fn take_ref(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.end_of(n)?;
        let out = self.buf.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(out)
    }

    /// Binary Data: a Two Byte Integer length then that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        let s = ByteString::try_from(raw)
            .map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?;
        // MQTT 3.1.1 [MQTT-1.5.3-2] / 5.0 [MQTT-1.5.4-2]: no U+0000. (Surrogates, the other
        // MUST NOT of [MQTT-1.5.3-1] / [MQTT-1.5.4-1], are already invalid UTF-8.)
        if s.as_bytes().contains(&0) {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(s)
    }

    /// Everything left, as a slice of the frame.
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos..self.end);
        self.pos = self.end;
        out
    }

    /// Fails unless the frame has been read to its end.
    #[inline]
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::Malformed(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_edges() {
        assert!(matches!(read_vbi(&[]), Vbi::Incomplete));
        assert!(matches!(read_vbi(&[0x80]), Vbi::Incomplete));
        assert!(matches!(read_vbi(&[0x80, 0x80, 0x80]), Vbi::Incomplete));
        assert!(matches!(read_vbi(&[0x80, 0x80, 0x80, 0x80]), Vbi::TooLong));
        assert!(matches!(
            read_vbi(&[0xFF, 0xFF, 0xFF, 0x7F, 9]),
            Vbi::Done(VBI_MAX, 4)
        ));
        assert!(matches!(read_vbi(&[0x80, 0x00]), Vbi::Done(0, 2)));
    }

    #[test]
    fn limits_confine_reads() {
        let mut r = Reader::new(Bytes::from_static(&[0, 1, 2, 3, 4, 5]), 1);
        assert_eq!(r.remaining(), 5);
        let outer = r.limit(2).unwrap();
        assert_eq!(r.u16(), Ok(0x0102));
        assert!(r.u8().is_err());
        assert!(r.rest().is_empty());
        r.unlimit(outer);
        assert_eq!(r.remaining(), 3);
        assert!(r.limit(4).is_err());
        assert!(r.take(usize::MAX).is_err());
        assert!(r.u32().is_err());
        assert_eq!(&r.take(3).unwrap()[..], [3, 4, 5]);
        assert!(r.finish("x").is_ok());
    }
}
