//! Gemma's SentencePiece vocabulary as the GGUF carries it (pieces + scores, no merges, no
//! `tokenizer.json`), tokenized the way llama.cpp's SPM tokenizer does: spaces become `▁`, start
//! from single characters, repeatedly merge the adjacent pair whose concatenation is a piece with the
//! highest score (leftmost on ties), and spell what is left outside the vocabulary as `<0xNN>` byte
//! tokens. (A `tokenizers` Unigram model built from the same scores splits differently: see
//! ../shared/models.md.)

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file;

/// SentencePiece token types (GGUF `tokenizer.ggml.token_type`).
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

const SPACE: char = '\u{2581}';

pub struct Tokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<String, u32>,
    /// Token of each byte value (`<0xNN>`), when the vocabulary has it.
    byte_tokens: [Option<u32>; 256],
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
}

/// A candidate merge of the symbols starting at `left` and its right neighbour.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    /// Byte length of the merged text, to detect a candidate made stale by an earlier merge.
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher score first, then the leftmost pair.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run of the text: bytes `start..start + len`, linked to its neighbours; `len == 0` once merged
/// into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: u32,
        eos: u32,
        unk: u32,
    ) -> Result<Self, String> {
        if pieces.len() != scores.len() || pieces.len() != types.len() {
            return Err(format!(
                "vocabulary has {} pieces, {} scores, {} types",
                pieces.len(),
                scores.len(),
                types.len()
            ));
        }
        if pieces.len() > u32::MAX as usize {
            return Err("vocabulary too large".into());
        }
        let mut index = HashMap::with_capacity(pieces.len());
        let mut byte_tokens = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            if types[i] == TYPE_BYTE {
                if let Some(b) = parse_byte_piece(p) {
                    byte_tokens[b as usize] = Some(id);
                }
                continue;
            }
            // The first of duplicate pieces wins, as in SentencePiece.
            index.entry(p.clone()).or_insert(id);
        }
        Ok(Self {
            pieces,
            scores,
            types,
            index,
            byte_tokens,
            bos,
            eos,
            unk,
        })
    }

    /// Reads the vocabulary from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, String> {
        let md = &content.metadata;
        let get = |k: &str| md.get(k).ok_or_else(|| format!("GGUF has no {k}"));
        let list = |k: &str| -> Result<&Vec<gguf_file::Value>, String> {
            get(k)?.to_vec().map_err(|e| format!("{k}: {e}"))
        };
        let pieces = list("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tokens: {e}"))?;
        let scores = list("tokenizer.ggml.scores")?
            .iter()
            .map(|v| v.to_f32())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("scores: {e}"))?;
        let types = list("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.to_i32())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("token types: {e}"))?;
        let id = |k: &str, default: u32| -> Result<u32, String> {
            match md.get(k) {
                Some(v) => v.to_u32().map_err(|e| format!("{k}: {e}")),
                None => Ok(default),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", 2)?;
        let eos = id("tokenizer.ggml.eos_token_id", 1)?;
        let unk = id("tokenizer.ggml.unknown_token_id", 3)?;
        Self::new(pieces, scores, types, bos, eos, unk)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// The id of a piece (e.g. `<end_of_turn>`), if the vocabulary has it.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// A piece that text may merge into: not a control or unknown token (those come only from
    /// special-token parsing, which this tokenizer does not do: prompts are plain text).
    fn mergeable(&self, text: &str) -> Option<u32> {
        let id = *self.index.get(text)?;
        match self.types[id as usize] {
            TYPE_CONTROL | TYPE_UNKNOWN => None,
            _ => Some(id),
        }
    }

    /// Token ids of `text`, with `<bos>` first when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let text: String = text
            .chars()
            .map(|c| if c == ' ' { SPACE } else { c })
            .collect();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>| {
            let Some(l) = left else { return };
            let Some(r) = symbols[l].next else { return };
            let (a, b) = (symbols[l], symbols[r]);
            let merged = &text[a.start..b.start + b.len];
            if let Some(id) = self.mergeable(merged) {
                heap.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    len: merged.len(),
                });
            }
        };
        for i in 0..symbols.len() {
            push(&mut heap, &symbols, Some(i));
        }
        while let Some(bg) = heap.pop() {
            let l = bg.left;
            let Some(r) = symbols[l].next else { continue };
            if symbols[l].len == 0 || symbols[l].len + symbols[r].len != bg.len {
                continue; // stale: one side changed since this candidate was pushed
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            push(&mut heap, &symbols, symbols[l].prev);
            push(&mut heap, &symbols, Some(l));
        }
        let mut ids = Vec::with_capacity(symbols.len() + 1);
        if add_bos {
            ids.push(self.bos);
        }
        let mut at = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.mergeable(piece) {
                Some(id) => ids.push(id),
                None => {
                    for b in piece.bytes() {
                        ids.push(self.byte_tokens[b as usize].unwrap_or(self.unk));
                    }
                }
            }
            at = s.next;
        }
        ids
    }

    /// The bytes a token stands for: its piece with `▁` as a space, a byte token's byte, nothing for
    /// control tokens (`<bos>`, `<eos>`, …).
    pub fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(piece) = self.pieces.get(id as usize) else {
            return;
        };
        match self.types[id as usize] {
            TYPE_CONTROL => {}
            TYPE_BYTE => match parse_byte_piece(piece) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(piece.as_bytes()),
            },
            _ => {
                for c in piece.chars() {
                    if c == SPACE {
                        out.push(b' ');
                    } else {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
    }

    /// Text of `ids` (invalid UTF-8 from byte tokens is replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of tokens into text as it is generated: bytes are held back until they form
/// complete UTF-8 characters, so a character split over byte tokens is never shown broken.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
    text: String,
}

impl TextStream {
    /// Adds one token; returns the text it completed (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> &str {
        let before = self.text.len();
        tok.token_bytes(id, &mut self.pending);
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Valid prefix: safe by construction.
                    self.text
                        .push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // An invalid sequence: replace it and go on after it.
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            break;
                        }
                    }
                }
            }
        }
        &self.text[before..]
    }

    /// Everything so far, with held-back bytes replaced.
    pub fn finish(mut self) -> String {
        if !self.pending.is_empty() {
            self.text.push_str(&String::from_utf8_lossy(&self.pending));
        }
        self.text
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A toy vocabulary: control tokens, byte tokens for every byte, and a few pieces.
    fn toy() -> Tokenizer {
        let mut pieces = vec![
            "<pad>".to_string(),
            "<eos>".into(),
            "<bos>".into(),
            "<unk>".into(),
        ];
        let mut types = vec![TYPE_CONTROL, TYPE_CONTROL, TYPE_CONTROL, TYPE_UNKNOWN];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
        }
        for p in ["a", "b", "c", "ab", "bc", "abc", "▁", "▁a", "é"] {
            pieces.push(p.into());
            types.push(1);
        }
        let mut scores = vec![0.0; pieces.len()];
        let score = |pieces: &[String], p: &str| pieces.iter().position(|x| x == p).unwrap();
        // "bc" outranks "ab", so "abc" must go a + bc → abc, not ab + c (then no "abc" merge... both
        // lead to abc here, so check the order on "abcb" below).
        scores[score(&pieces, "ab")] = -2.0;
        scores[score(&pieces, "bc")] = -1.0;
        scores[score(&pieces, "abc")] = -3.0;
        scores[score(&pieces, "▁a")] = -1.5;
        Tokenizer::new(pieces, scores, types, 2, 1, 3).unwrap()
    }

    fn id(t: &Tokenizer, p: &str) -> u32 {
        t.token_id(p).unwrap()
    }

    #[test]
    fn merges_the_best_scoring_pair_first() {
        let t = toy();
        // "bcab": bc (-1) first, then ab (-2); "abab" → ab ab.
        assert_eq!(t.encode("bcab", false), vec![id(&t, "bc"), id(&t, "ab")]);
        assert_eq!(t.encode("abc", true), vec![2, id(&t, "abc")]);
        // "abb": ab then b.
        assert_eq!(t.encode("abb", false), vec![id(&t, "ab"), id(&t, "b")]);
    }

    #[test]
    fn spaces_become_the_sentencepiece_marker_and_unknown_chars_bytes() {
        let t = toy();
        assert_eq!(t.encode(" a", false), vec![id(&t, "▁a")]);
        // 'z' is not a piece: its byte token; 'é' is a piece; '€' is three byte tokens.
        let z = t.encode("z", false);
        assert_eq!(z, vec![4 + u32::from(b'z')]);
        assert_eq!(t.encode("é", false), vec![id(&t, "é")]);
        let euro = t.encode("€", false);
        assert_eq!(euro.len(), 3);
        assert_eq!(t.decode(&euro), "€");
        assert_eq!(t.decode(&t.encode(" ab c", true)), " ab c");
        assert!(t.encode("", false).is_empty());
    }

    #[test]
    fn control_tokens_are_neither_merged_into_nor_shown() {
        let t = toy();
        assert_eq!(t.decode(&[2, id(&t, "a"), 1]), "a");
        // "<eos>" typed as text stays text (byte tokens here, since '<' etc. are not pieces).
        assert!(!t.encode("<eos>", false).contains(&1));
    }

    #[test]
    fn text_stream_holds_back_split_characters() {
        let t = toy();
        let euro = t.encode("€", false);
        let mut s = TextStream::default();
        assert_eq!(s.push(&t, euro[0]), "");
        assert_eq!(s.push(&t, euro[1]), "");
        assert_eq!(s.push(&t, euro[2]), "€");
        assert_eq!(s.push(&t, id(&t, "▁a")), " a");
        // An invalid byte is replaced, not held forever.
        assert_eq!(s.push(&t, 4 + 0xff), "\u{fffd}");
        assert_eq!(s.push(&t, euro[0]), "");
        assert_eq!(s.finish(), "€ a\u{fffd}\u{fffd}");
    }
}
