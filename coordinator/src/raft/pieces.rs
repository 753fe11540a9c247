//! Raft messages too large for one gRPC message (snapshots, mostly) travel
//! in pieces: the sender cuts the encoded message, the receiver puts it back
//! together, one message at a time per sender, within a size bound.

use std::collections::HashMap;

use drc_proto::MessagePiece;

/// Upper bound of one gRPC message of the Raft transport. Batches stay
/// under half of it; a larger message is sent in pieces.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The default size of a piece, and the bounds of `raft.piece_bytes`.
pub const DEFAULT_PIECE_BYTES: usize = 4 * 1024 * 1024;
pub const MIN_PIECE_BYTES: usize = 1024;
pub const MAX_PIECE_BYTES: usize = MAX_MESSAGE_BYTES / 2;
/// A batch of whole messages is cut at this many bytes.
pub const BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;
/// The largest message put back together (a snapshot of the whole state).
pub const MAX_ASSEMBLED_BYTES: u64 = 1024 * 1024 * 1024;

/// The pieces of one encoded message, numbered `id`.
pub fn split(id: u64, bytes: &[u8], piece: usize) -> Vec<MessagePiece> {
    let total = bytes.len() as u64;
    bytes
        .chunks(piece.max(1))
        .scan(0u64, |offset, data| {
            let p = MessagePiece { id, offset: *offset, total, data: data.to_vec() };
            *offset += data.len() as u64;
            Some(p)
        })
        .collect()
}

/// Why a piece was refused; the message it belongs to is dropped (Raft
/// sends it again).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceError {
    #[error("a message of {0} bytes is over the {MAX_ASSEMBLED_BYTES}-byte bound")]
    TooLarge(u64),
    #[error("piece at offset {got} of message {id}, expected offset {expected}")]
    OutOfOrder { id: u64, got: u64, expected: u64 },
    #[error("piece of message {id} runs past its stated size {total}")]
    Overrun { id: u64, total: u64 },
}

struct Assembly {
    id: u64,
    total: u64,
    buf: Vec<u8>,
}

/// Messages being put back together, one per sender.
#[derive(Default)]
pub struct Assembler {
    by_sender: HashMap<u64, Assembly>,
}

impl Assembler {
    /// Takes one piece from `sender`; the whole message once its last piece
    /// arrived. A piece of another message replaces what `sender` had sent
    /// of the previous one (it gave that one up).
    pub fn add(&mut self, sender: u64, p: MessagePiece) -> Result<Option<Vec<u8>>, PieceError> {
        if p.total > MAX_ASSEMBLED_BYTES {
            self.by_sender.remove(&sender);
            return Err(PieceError::TooLarge(p.total));
        }
        let fresh = self.by_sender.get(&sender).is_none_or(|a| a.id != p.id || a.total != p.total);
        if fresh {
            if p.offset != 0 {
                self.by_sender.remove(&sender);
                return Err(PieceError::OutOfOrder { id: p.id, got: p.offset, expected: 0 });
            }
            // Grown as pieces arrive, not reserved from the stated size.
            self.by_sender.insert(sender, Assembly { id: p.id, total: p.total, buf: Vec::new() });
        }
        let Some(a) = self.by_sender.get_mut(&sender) else { return Ok(None) };
        if p.offset != a.buf.len() as u64 {
            let expected = a.buf.len() as u64;
            self.by_sender.remove(&sender);
            return Err(PieceError::OutOfOrder { id: p.id, got: p.offset, expected });
        }
        if a.buf.len() as u64 + p.data.len() as u64 > a.total {
            let total = a.total;
            self.by_sender.remove(&sender);
            return Err(PieceError::Overrun { id: p.id, total });
        }
        a.buf.extend_from_slice(&p.data);
        if a.buf.len() as u64 == a.total {
            return Ok(self.by_sender.remove(&sender).map(|a| a.buf));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_cut_in_pieces_is_put_back_together() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let pieces = split(7, &bytes, 1024);
        assert_eq!(pieces.len(), 10);
        let mut a = Assembler::default();
        let mut whole = None;
        for p in pieces {
            assert!(whole.is_none());
            whole = a.add(2, p).expect("in order");
        }
        assert_eq!(whole, Some(bytes));
    }

    #[test]
    fn pieces_out_of_order_past_their_size_or_over_the_bound_are_refused_and_nothing_is_kept() {
        let bytes = vec![1u8; 3000];
        let pieces = split(1, &bytes, 1000);
        let mut a = Assembler::default();
        assert_eq!(a.add(2, pieces[1].clone()), Err(PieceError::OutOfOrder { id: 1, got: 1000, expected: 0 }));
        a.add(2, pieces[0].clone()).expect("first");
        assert_eq!(a.add(2, pieces[2].clone()), Err(PieceError::OutOfOrder { id: 1, got: 2000, expected: 1000 }));
        a.add(2, pieces[0].clone()).expect("a fresh start");
        let mut long = pieces[1].clone();
        long.data = vec![0; 2500];
        assert_eq!(a.add(2, long), Err(PieceError::Overrun { id: 1, total: 3000 }));
        let huge = MessagePiece { id: 9, offset: 0, total: MAX_ASSEMBLED_BYTES + 1, data: vec![0] };
        assert_eq!(a.add(2, huge), Err(PieceError::TooLarge(MAX_ASSEMBLED_BYTES + 1)));
        // Senders are kept apart; a new message replaces an unfinished one.
        a.add(2, pieces[0].clone()).expect("node 2");
        a.add(3, split(5, &[9; 10], 4)[0].clone()).expect("node 3");
        let other = split(2, &[4; 10], 10);
        assert_eq!(a.add(2, other[0].clone()), Ok(Some(vec![4; 10])), "node 2 gave up message 1");
    }
}
