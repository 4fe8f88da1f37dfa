//! Reading and writing protocol messages on an async byte stream.
//!
//! Reads never go past the end of the current frame ([`ncx_proto::FrameDecoder::wanted`]), so the raw
//! bytes that follow a substream's status stay in the stream for the splice.

use ncx_proto::{DecodeError, FrameDecoder, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream ended between frames.
    #[error("the stream ended")]
    Closed,
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame")]
    Truncated,
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Invalid(DecodeError),
    /// The transport failed.
    #[error("{0}")]
    Io(std::io::Error),
}

// The cause is part of the message and deliberately not `source()`: errors are printed with their
// chain, and a cause in both was printed twice ("x: x").
impl From<DecodeError> for ReadError {
    fn from(e: DecodeError) -> Self {
        ReadError::Invalid(e)
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Reads messages from one stream.
#[derive(Debug, Default)]
pub struct MessageReader {
    decoder: FrameDecoder,
}

impl MessageReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the next whole message. Not cancel-safe only in that a cancelled call may leave a partial
    /// frame buffered; calling again continues it.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<Message, ReadError> {
        let mut chunk = [0u8; 512];
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(msg);
            }
            let want = self.decoder.wanted().min(chunk.len());
            let n = io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(if self.decoder.buffered() == 0 {
                    ReadError::Closed
                } else {
                    ReadError::Truncated
                });
            }
            self.decoder.push(&chunk[..n]);
        }
    }
}

/// Writes and flushes one message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    io: &mut W,
    msg: &Message,
) -> std::io::Result<()> {
    let bytes = ncx_proto::encode_to_vec(msg);
    io.write_all(&bytes).await?;
    io.flush().await
}
