//! lz-string's `decompressFromBase64` (posthog-js's `compression=lz64`), with bounded memory.
//!
//! lz-string is LZW over UTF-16 code units: each code names a dictionary entry to emit, and
//! every emission adds one entry to the dictionary, the previous emission followed by the first
//! unit of this one. The usual decoder (lz-string's own, the `lz-str` crate) keeps each entry as
//! its own copy, so a long run costs the square of its length in dictionary (a 44 KB body took
//! 1.35 GB), and it finishes before anyone can look at the size.
//!
//! Here an entry is a span of the output instead: the previous emission followed by the first
//! unit of the next one is exactly what the output holds at that place. Memory is the output
//! (2 bytes a unit, stopped as soon as it would pass the caller's limit) plus 8 bytes an entry.
//! Entries are bounded too: every code emits at least one unit and a compressor sends each
//! distinct unit as a literal once, so a real stream never has more entries than units emitted
//! plus 65,536; a stream that has more is refused. For any stream lz-string's compressor makes,
//! the result is `lz-str`'s (tested against it).

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LzError {
    /// Not a stream lz-string's decoder accepts.
    Invalid,
    /// The output would pass the limit (or the dictionary its bound).
    TooLarge,
}

/// lz-string's base64 alphabet; `=` (64) reads as 0 in six bits, as in lz-string.
const ALPHABET: &[u8; 65] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

/// Codes below the first dictionary entry.
const LITERAL_8: usize = 0;
const LITERAL_16: usize = 1;
const CLOSE: usize = 2;
const FIRST_ENTRY: usize = 3;

/// Literals a compressor sends at most: one per distinct UTF-16 unit.
const MAX_LITERALS: usize = 1 << 16;

/// The stream's bits, six per character, lowest first within a value as lz-string reads them.
/// Characters outside the alphabet are skipped (as `lz-str` does).
struct Bits<I> {
    chars: I,
    value: u16,
    position: u16,
}

impl<I: Iterator<Item = u8>> Bits<I> {
    fn new(mut chars: I) -> Option<Self> {
        let value = next_value(&mut chars)?;
        Some(Bits { chars, value, position: 32 })
    }

    /// One bit; `None` when the stream ends, which includes reading the last bit of the last
    /// character (as `lz-str`: a compressor's stream closes before that).
    fn bit(&mut self) -> Option<bool> {
        let bit = self.value & self.position != 0;
        self.position >>= 1;
        if self.position == 0 {
            self.position = 32;
            self.value = next_value(&mut self.chars)?;
        }
        Some(bit)
    }

    fn bits(&mut self, n: u8) -> Result<usize, LzError> {
        let mut out = 0usize;
        for i in 0..n {
            out |= usize::from(self.bit().ok_or(LzError::Invalid)?) << i;
        }
        Ok(out)
    }
}

/// Each byte's value in [`ALPHABET`], or `NOT_IN_ALPHABET`.
const VALUES: [u8; 256] = {
    let mut values = [NOT_IN_ALPHABET; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        values[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};
const NOT_IN_ALPHABET: u8 = u8::MAX;

fn next_value(chars: &mut impl Iterator<Item = u8>) -> Option<u16> {
    chars.map(|c| VALUES[usize::from(c)]).find(|&v| v != NOT_IN_ALPHABET).map(u16::from)
}

/// Grows `vec` to hold `extra` more items without passing `cap` items of capacity.
fn reserve_within<T>(vec: &mut Vec<T>, extra: usize, cap: usize) {
    let needed = vec.len() + extra;
    if needed > vec.capacity() {
        let target = needed.max(vec.capacity().saturating_mul(2)).max(64).min(cap).max(needed);
        vec.reserve_exact(target - vec.len());
    }
}

/// Decompresses lz-string's base64 form into UTF-16 units, at most `max_units` of them.
pub(crate) fn decompress_from_base64(chars: impl Iterator<Item = u8>, max_units: usize) -> Result<Vec<u16>, LzError> {
    // Spans are u32s; `max_units` never needs more.
    let max_units = max_units.min(u32::MAX as usize - MAX_LITERALS - 2);
    let max_entries = max_units + MAX_LITERALS + 1;
    let Some(mut bits) = Bits::new(chars) else { return Ok(Vec::new()) };
    // The whole bound at once: memory the allocator maps but that becomes resident only as it
    // is written, where growing by doubling would copy (and, with mimalloc, keep) every smaller
    // buffer on the way: a bomb stopped at a 20 MB limit peaked at 120 MB that way.
    let mut out: Vec<u16> = Vec::with_capacity(max_units.min(1 << 31));
    // Entry `FIRST_ENTRY + i` is `out[start..start + len]` for `dict[i] = (start, len)`.
    let mut dict: Vec<(u32, u32)> = Vec::new();

    let first = match bits.bits(2)? {
        LITERAL_8 => bits.bits(8)?,
        LITERAL_16 => bits.bits(16)?,
        CLOSE => return Ok(out),
        _ => return Err(LzError::Invalid),
    };
    if max_units == 0 {
        return Err(LzError::TooLarge);
    }
    out.push(first as u16);
    dict.push((0, 1));
    // The previous emission, as a span of `out`.
    let mut w = (0usize, 1usize);
    let mut num_bits: u8 = 3;
    let mut enlarge_in: u64 = 4;
    loop {
        let code = bits.bits(num_bits)?;
        let literal = match code {
            LITERAL_8 => Some(bits.bits(8)? as u16),
            LITERAL_16 => Some(bits.bits(16)? as u16),
            CLOSE => return Ok(out),
            _ => None,
        };
        if literal.is_some() {
            reserve_within(&mut dict, 1, max_entries);
            // The literal is emitted just below, at the end of the output.
            dict.push((out.len() as u32, 1));
            enlarge_in -= 1;
        }
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }

        let start = out.len();
        let len = match literal {
            Some(unit) => {
                if start + 1 > max_units {
                    return Err(LzError::TooLarge);
                }
                reserve_within(&mut out, 1, max_units);
                out.push(unit);
                1
            }
            None => {
                let (from, len) = match dict.get(code - FIRST_ENTRY) {
                    Some(&(from, len)) => (from as usize, len as usize),
                    // The entry being defined: the previous emission and its own first unit.
                    None if code - FIRST_ENTRY == dict.len() => (w.0, w.1 + 1),
                    None => return Err(LzError::Invalid),
                };
                if start + len > max_units {
                    return Err(LzError::TooLarge);
                }
                reserve_within(&mut out, len, max_units);
                if from + len <= start {
                    out.extend_from_within(from..from + len);
                } else {
                    // Overlapping (the entry being defined): unit by unit, each already there.
                    for i in from..from + len {
                        out.push(out[i]);
                    }
                }
                len
            }
        };

        // The previous emission followed by this one's first unit, where the output holds it.
        if dict.len() >= max_entries || dict.len() > out.len() + MAX_LITERALS {
            return Err(LzError::TooLarge);
        }
        reserve_within(&mut dict, 1, max_entries);
        dict.push((w.0 as u32, (w.1 + 1) as u32));
        enlarge_in -= 1;
        w = (start, len);
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ours(packed: &str, max_units: usize) -> Result<Vec<u16>, LzError> {
        decompress_from_base64(packed.bytes(), max_units)
    }

    /// A random string mixing ASCII, JSON punctuation, other BMP characters, surrogate pairs
    /// and runs (which make long dictionary entries).
    fn random_text(rng: &mut impl Rng) -> String {
        let len = rng.random_range(0..2000);
        let mut text = String::new();
        while text.chars().count() < len {
            match rng.random_range(0..10) {
                0..=3 => text.push(rng.random_range(b' '..=b'~') as char),
                4 => text.push_str(["{\"event\":", "\"distinct_id\"", ",", "[", "]}"][rng.random_range(0..5)]),
                5 => text.push(char::from_u32(rng.random_range(0x80..0xD800)).unwrap()),
                6 => text.push(char::from_u32(rng.random_range(0x10000..0x10FFFF)).unwrap()),
                7 => text.push(['é', '中', '😀', '\u{FFFF}', '\0'][rng.random_range(0..5)]),
                _ => {
                    let c = rng.random_range(b'a'..=b'e') as char;
                    text.extend(std::iter::repeat_n(c, rng.random_range(1..200)));
                }
            }
        }
        text
    }

    #[test]
    fn round_trips_as_lz_str_decodes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for _ in 0..400 {
            let text = random_text(&mut rng);
            let packed = lz_str::compress_to_base64(&text);
            let expected = lz_str::decompress_from_base64(&packed).expect("lz-str decodes its own output");
            let units = ours(&packed, usize::MAX).unwrap();
            assert_eq!(units, expected);
            assert_eq!(String::from_utf16(&units).unwrap(), text);
        }
        for text in ["", "a", "aa", "ab", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "😀", "\u{ffff}\u{0}"] {
            let packed = lz_str::compress_to_base64(text);
            assert_eq!(ours(&packed, usize::MAX).unwrap(), lz_str::decompress_from_base64(&packed).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn arbitrary_input_decodes_as_lz_str_or_is_refused() {
        // Corrupted streams: ours agrees with lz-str whenever it decodes.
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        for _ in 0..2000 {
            let mut packed: Vec<u8> = lz_str::compress_to_base64(&random_text(&mut rng)).into_bytes();
            for _ in 0..rng.random_range(0..4) {
                if !packed.is_empty() {
                    let i = rng.random_range(0..packed.len());
                    packed[i] = ALPHABET[rng.random_range(0..ALPHABET.len())];
                }
            }
            if rng.random_bool(0.2) {
                packed.truncate(rng.random_range(0..=packed.len()));
            }
            let packed = String::from_utf8(packed).unwrap();
            let expected = lz_str::decompress_from_base64(&packed);
            match ours(&packed, 1 << 20) {
                Ok(units) => assert_eq!(Some(units), expected, "{packed}"),
                Err(LzError::Invalid) => assert_eq!(expected, None, "{packed}"),
                Err(LzError::TooLarge) => assert!(expected.is_none_or(|e| e.len() > 1 << 20), "{packed}"),
            }
        }
    }

    #[test]
    fn output_stops_at_the_limit() {
        let text = "{},".repeat(100_000);
        let packed = lz_str::compress_to_base64(&text);
        assert_eq!(ours(&packed, text.len()).unwrap().len(), text.len());
        assert_eq!(ours(&packed, text.len() - 1), Err(LzError::TooLarge));
        assert_eq!(ours(&packed, 0), Err(LzError::TooLarge));
        assert_eq!(ours(&lz_str::compress_to_base64(""), 0), Ok(Vec::new()));
    }

    #[test]
    fn characters_outside_the_alphabet_are_skipped() {
        let packed = lz_str::compress_to_base64("hello, wörld");
        let noisy: String = packed.chars().flat_map(|c| [c, '\n', 'é']).collect();
        assert_eq!(String::from_utf16(&ours(&noisy, 100).unwrap()).unwrap(), "hello, wörld");
        assert_eq!(ours("", 100), Ok(Vec::new()));
        assert_eq!(ours("!!!", 100), Ok(Vec::new()));
    }
}
