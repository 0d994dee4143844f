//! Block2 (RFC 7959) for what the gateway sends: which part of a representation goes in a
//! response or notification. Pure, and stateless: a follow-up GET for block N is served from
//! the current value, so nothing is cached per peer (a forged source address cannot make the
//! gateway hold payloads).

use std::ops::Range;

use coap_lite::block_handler::BlockValue;

/// The block size the gateway offers (SZX 6), and the largest it serves.
pub const BLOCK_SIZE: usize = 1024;

/// The part of a representation of `len` bytes to send.
#[derive(Debug, PartialEq)]
pub enum Slice {
    /// All of it, without a Block2 option.
    Whole,
    /// A block: these bytes, with this Block2 option.
    Block(Range<usize>, BlockValue),
    /// The block asked for starts past the end (4.02 Bad Option).
    OutOfRange,
}

/// Which part of `len` bytes answers a request with the Block2 option `asked` (none: the
/// first block if it does not fit, else all).
pub fn block2(len: usize, asked: Option<&BlockValue>) -> Slice {
    let size = asked.map_or(BLOCK_SIZE, |b| b.size().min(BLOCK_SIZE));
    let num = match asked {
        None if len <= BLOCK_SIZE => return Slice::Whole,
        None => 0,
        // A client asking in larger blocks than we serve gets the same bytes in ours.
        Some(b) => usize::from(b.num) * b.size() / size,
    };
    let start = num * size;
    if start >= len && !(len == 0 && num == 0) {
        return Slice::OutOfRange;
    }
    let end = (start + size).min(len);
    match BlockValue::new(num, end < len, size) {
        Ok(value) => Slice::Block(start..end, value),
        Err(_) => Slice::OutOfRange,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(num: usize, size: usize) -> BlockValue {
        BlockValue::new(num, false, size).unwrap()
    }

    #[test]
    fn small_values_go_whole_and_large_ones_in_blocks() {
        assert_eq!(block2(10, None), Slice::Whole);
        assert_eq!(block2(1024, None), Slice::Whole);
        let Slice::Block(range, value) = block2(5000, None) else {
            panic!()
        };
        assert_eq!(
            (range, value.num, value.more, value.size()),
            (0..1024, 0, true, 1024)
        );
        let Slice::Block(range, value) = block2(5000, Some(&asked(4, 1024))) else {
            panic!()
        };
        assert_eq!((range, value.num, value.more), (4096..5000, 4, false));
        assert_eq!(block2(5000, Some(&asked(5, 1024))), Slice::OutOfRange);
    }

    #[test]
    fn a_smaller_block_size_is_honoured_and_a_larger_one_capped() {
        let Slice::Block(range, value) = block2(100, Some(&asked(1, 64))) else {
            panic!()
        };
        assert_eq!(
            (range, value.num, value.more, value.size()),
            (64..100, 1, false, 64)
        );
        // Block 1 of 2048 bytes is bytes 2048..4096: blocks 2 and 3 of ours; 2 comes first.
        let big = BlockValue {
            num: 1,
            more: false,
            size_exponent: 7,
        };
        let Slice::Block(range, value) = block2(5000, Some(&big)) else {
            panic!()
        };
        assert_eq!((range, value.num, value.size()), (2048..3072, 2, 1024));
        // An empty value asked for block 0 is an empty block, not an error.
        assert!(matches!(block2(0, Some(&asked(0, 16))), Slice::Block(r, _) if r == (0..0)));
    }
}
