//! Fuzzes the stream preamble and link-cell decoders (specs/01 §4.2, §5): no input may panic,
//! and whatever decodes must re-encode to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shallot_cell::{LINK_CELL_LEN, LinkCell, MAX_HOPS, Preamble, link_cell_len};

fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = data.get(..Preamble::LEN) {
        if let Ok(p) = Preamble::decode(bytes) {
            assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        }
    }
    let _ = Preamble::decode(data);

    // The input as a cell of its own length (almost always rejected by length).
    round_trip(data);

    // A cell of a valid length: the first byte picks the link, the rest fills the cell (zero
    // padded or cut), so the command parsers see real input.
    if let Some((&select, rest)) = data.split_first() {
        let len = link_cell_len(usize::from(select) % MAX_HOPS).unwrap_or(LINK_CELL_LEN);
        let mut cell = vec![0u8; len];
        let n = rest.len().min(len);
        cell[..n].copy_from_slice(&rest[..n]);
        round_trip(&cell);
    }
});

fn round_trip(cell: &[u8]) {
    if let Ok(decoded) = LinkCell::decode(cell) {
        let again = decoded
            .encode(cell.len())
            .expect("a decoded cell must re-encode at its own length");
        assert_eq!(again.len(), cell.len());
        assert_eq!(LinkCell::decode(&again).expect("re-encoded cell must decode"), decoded);
    }
}
