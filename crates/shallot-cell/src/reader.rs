//! A bounds-checked reader over remote input: every read is checked, none can panic.

use crate::CellError;

/// Reads big-endian fields from a byte slice, failing with [`CellError::Truncated`] at the end.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`; `what` names the structure in errors.
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CellError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(CellError::Truncated {
                what: self.what,
                needed: n,
                got: self.rest.len(),
            }),
        }
    }

    /// Takes exactly `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CellError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CellError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CellError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, CellError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails with [`CellError::TrailingBytes`] if anything is left (specs/03 §3.2).
    pub(crate) fn finish(self, command: u8) -> Result<(), CellError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CellError::TrailingBytes {
                command,
                extra: self.rest.len(),
            })
        }
    }
}

/// Writes big-endian fields into a buffer whose size the caller has already checked.
///
/// Writing past the end is a bug in this crate (lengths are checked before writing); it is
/// reported as [`CellError::LengthExceedsArea`] rather than a panic.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self { out, pos: 0 }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), CellError> {
        let end = self.pos.checked_add(bytes.len());
        match end.and_then(|end| self.out.get_mut(self.pos..end)) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
                Ok(())
            }
            None => Err(CellError::LengthExceedsArea {
                length: self.pos.saturating_add(bytes.len()),
                max: self.out.len(),
            }),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), CellError> {
        self.put(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), CellError> {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), CellError> {
        self.put(&v.to_be_bytes())
    }

    /// Fills the rest with zeros (padding, specs/01 §6).
    pub(crate) fn zero_rest(self) {
        if let Some(rest) = self.out.get_mut(self.pos..) {
            rest.fill(0);
        }
    }
}
