//! The directory protocol on a libp2p stream (specs/04 §7.1): one request and one response per
//! stream, each a 4-byte big-endian length and that many bytes of a message of
//! `shallot_directory::dirproto`. A length past the message's bound is refused before anything
//! is read, so a peer can make us read at most `MAX_REQUEST_LEN` or `MAX_RESPONSE_LEN` bytes.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use shallot_directory::{DirRequest, DirResponse, MAX_REQUEST_LEN, MAX_RESPONSE_LEN};

/// The directory protocol (specs/04 §7).
pub const DIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/shallot/dir/2.0.0");

/// The request-response codec of [`DIR_PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DirCodec;

/// Reads one framed message of at most `max` bytes; a longer length is refused unread.
pub async fn read_dir_message<T: AsyncRead + Unpin>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("directory message of {len} bytes, more than {max}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Writes `bytes` as one framed message and closes the stream's writing side.
pub async fn write_dir_message<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too long"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(err: shallot_directory::DirectoryError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl libp2p::request_response::Codec for DirCodec {
    type Protocol = StreamProtocol;
    type Request = DirRequest;
    type Response = DirResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<DirRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_dir_message(io, MAX_REQUEST_LEN).await?;
        DirRequest::decode(&bytes).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<DirResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_dir_message(io, MAX_RESPONSE_LEN).await?;
        DirResponse::decode(&bytes).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: DirRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_dir_message(io, &request.encode().map_err(invalid)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: DirResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_dir_message(io, &response.encode().map_err(invalid)?).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use libp2p::request_response::Codec;
    use shallot_directory::Listing;

    use super::*;

    #[tokio::test]
    async fn messages_cross_a_stream_and_oversized_lengths_are_refused_unread() {
        let mut codec = DirCodec;
        let mut wire = Vec::new();
        let request = DirRequest::Listing { epoch: 3, since: 4 };
        codec
            .write_request(
                &DIR_PROTOCOL,
                &mut futures::io::Cursor::new(&mut wire),
                request.clone(),
            )
            .await
            .unwrap();
        let got = codec
            .read_request(&DIR_PROTOCOL, &mut futures::io::Cursor::new(&wire))
            .await
            .unwrap();
        assert_eq!(got, request);
        let response = DirResponse::Listing(Listing::default());
        let mut wire = Vec::new();
        codec
            .write_response(
                &DIR_PROTOCOL,
                &mut futures::io::Cursor::new(&mut wire),
                response.clone(),
            )
            .await
            .unwrap();
        let got = codec
            .read_response(&DIR_PROTOCOL, &mut futures::io::Cursor::new(&wire))
            .await
            .unwrap();
        assert_eq!(got, response);
        // A length just past the bound: refused without reading (or allocating) the body.
        let mut huge = ((MAX_RESPONSE_LEN + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let err = codec
            .read_response(&DIR_PROTOCOL, &mut futures::io::Cursor::new(&huge))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut huge = ((MAX_REQUEST_LEN + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(
            codec
                .read_request(&DIR_PROTOCOL, &mut futures::io::Cursor::new(&huge))
                .await
                .is_err()
        );
    }
}
