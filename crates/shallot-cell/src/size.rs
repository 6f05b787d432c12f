//! Cell sizes per link (specs/01 §3) and the relay-message area (specs/03 §2).

/// Length in bytes of a cell on link 0 (client → first hop). specs/01 §3.
///
/// Chosen by the benchmark of specs/01 §8 (2048: the fastest per payload byte through three
/// layers without the backward-path loss of 4096). Every other size derives from this one
/// constant.
pub const LINK_CELL_LEN: usize = 2048;

/// Bytes one onion layer adds to a cell: 1 encrypted marker byte + a 16-byte Poly1305 tag.
/// specs/01 §3.
pub const LAYER_OVERHEAD: usize = 17;

/// Maximum number of hops in a circuit, and so the number of distinct link cell lengths.
/// specs/01 §3.
pub const MAX_HOPS: usize = 8;

/// Length of the relay header: `RELAY_CMD [1] | STREAM_ID [2] | LENGTH [2]`. specs/03 §2.
pub const RELAY_HEADER_LEN: usize = 5;

/// The cell length on link `link_index` (link *i* carries cells into hop *i*; link 0 starts at the
/// client), or `None` when `link_index >= MAX_HOPS`. specs/01 §3.
#[must_use]
pub const fn link_cell_len(link_index: usize) -> Option<usize> {
    if link_index < MAX_HOPS {
        Some(LINK_CELL_LEN - link_index * LAYER_OVERHEAD)
    } else {
        None
    }
}

/// The link index whose cell length is `cell_len`, or `None` if `cell_len` is not a valid link
/// cell length. The inverse of [`link_cell_len`]. specs/01 §3.
#[must_use]
pub const fn link_index_for_cell_len(cell_len: usize) -> Option<usize> {
    if cell_len > LINK_CELL_LEN {
        return None;
    }
    let shrink = LINK_CELL_LEN - cell_len;
    if !shrink.is_multiple_of(LAYER_OVERHEAD) {
        return None;
    }
    let index = shrink / LAYER_OVERHEAD;
    if index < MAX_HOPS { Some(index) } else { None }
}

/// Length of the relay-message area of a hop whose incoming link carries `cell_len`-byte cells:
/// `cell_len - 1 - LAYER_OVERHEAD` (0 if `cell_len` is too small). specs/03 §2.
#[must_use]
pub const fn relay_payload_len(cell_len: usize) -> usize {
    cell_len.saturating_sub(1 + LAYER_OVERHEAD)
}

/// Largest DATA of one relay message for a hop whose incoming link carries `cell_len`-byte cells:
/// `relay_payload_len(cell_len) - 5`. specs/03 §2.
#[must_use]
pub const fn max_data_len(cell_len: usize) -> usize {
    relay_payload_len(cell_len).saturating_sub(RELAY_HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn link_lengths_shrink_by_one_layer() {
        assert_eq!(link_cell_len(0), Some(LINK_CELL_LEN));
        assert_eq!(link_cell_len(1), Some(LINK_CELL_LEN - 17));
        assert_eq!(link_cell_len(MAX_HOPS - 1), Some(LINK_CELL_LEN - 17 * 7));
        assert_eq!(link_cell_len(MAX_HOPS), None);
        assert_eq!(link_cell_len(usize::MAX), None);
    }

    #[test]
    fn link_index_inverts_link_cell_len() {
        for i in 0..MAX_HOPS {
            let len = link_cell_len(i).unwrap();
            assert_eq!(link_index_for_cell_len(len), Some(i));
            assert_eq!(link_index_for_cell_len(len + 1), None);
            assert_eq!(link_index_for_cell_len(len - 1), None);
        }
        assert_eq!(link_index_for_cell_len(LINK_CELL_LEN - 17 * MAX_HOPS), None);
        assert_eq!(link_index_for_cell_len(0), None);
        assert_eq!(link_index_for_cell_len(usize::MAX), None);
    }

    #[test]
    fn relay_area_matches_onion_layout() {
        // The client's body for hop k is n = LINK_CELL_LEN - 1 bytes; hop k's message is
        // n - 17 (k + 1) bytes (contract §4), which must equal relay_payload_len(link_cell_len(k)).
        let n = LINK_CELL_LEN - 1;
        for k in 0..MAX_HOPS {
            let l = link_cell_len(k).unwrap();
            assert_eq!(relay_payload_len(l), n - 17 * (k + 1));
            assert_eq!(max_data_len(l), relay_payload_len(l) - 5);
        }
        assert_eq!(relay_payload_len(3), 0);
        assert_eq!(max_data_len(20), 0);
    }
}
