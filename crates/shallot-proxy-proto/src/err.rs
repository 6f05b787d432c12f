//! Errors of the two handshakes. Every error closes the application's connection; some first
//! send a last answer, which the error itself provides so that the IO shell needs no protocol
//! knowledge.

use shallot_error::{ErrorKind, HasKind};
use socks5_server::proto::handshake::{self, Method};

use crate::http::http_response;

/// Why a SOCKS5 handshake failed (specs/07 §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocksError {
    /// The greeting or the request starts with a version byte other than 0x05.
    #[error("not socks version 5 (version byte {0:#04x})")]
    Version(u8),
    /// The greeting offers neither "no authentication" nor username/password (specs/07 §3.1).
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// The username/password subnegotiation has a version other than 0x01 (RFC 1929).
    #[error("password subnegotiation version {0:#04x}, not 0x01")]
    PasswordVersion(u8),
    /// The handshake was fed again after it finished or failed.
    #[error("socks handshake already over")]
    AlreadyOver,
}

impl SocksError {
    /// Bytes to send before closing, if the protocol answers this error: `05 FF` when no
    /// method is acceptable (specs/07 §3.1); nothing otherwise.
    pub fn reply_before_close(&self) -> Option<Vec<u8>> {
        match self {
            Self::NoAcceptableMethod => {
                let mut reply = Vec::with_capacity(2);
                handshake::Response::new(Method::UNACCEPTABLE).write_to_buf(&mut reply);
                Some(reply)
            }
            Self::Version(_) | Self::PasswordVersion(_) | Self::AlreadyOver => None,
        }
    }
}

impl HasKind for SocksError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Version(_) | Self::NoAcceptableMethod | Self::PasswordVersion(_) => {
                ErrorKind::Protocol
            }
            Self::AlreadyOver => ErrorKind::BadApiUsage,
        }
    }
}

/// Why an HTTP request head was refused before its method was looked at (specs/07 §6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The head is longer than [`crate::MAX_HTTP_HEAD`] bytes.
    #[error("http request head longer than {} bytes", crate::MAX_HTTP_HEAD)]
    HeadTooLarge,
    /// The head has more than [`crate::MAX_HTTP_HEADERS`] headers.
    #[error("http request head with more than {} headers", crate::MAX_HTTP_HEADERS)]
    TooManyHeaders,
    /// The head is not HTTP/1.x.
    #[error("not an http/1 request head: {0}")]
    Malformed(httparse::Error),
    /// The handshake was fed again after it finished or failed.
    #[error("http handshake already over")]
    AlreadyOver,
}

impl HttpError {
    /// The response to send before closing: 431 for a head too large, 400 for one that is not
    /// HTTP/1 (specs/07 §6).
    pub fn reply_before_close(&self) -> Option<Vec<u8>> {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => Some(http_response(
                431,
                "Request Header Fields Too Large",
                "The request head is larger than this proxy accepts.",
            )),
            Self::Malformed(_) => Some(http_response(
                400,
                "Bad Request",
                "This is not an HTTP/1 request.",
            )),
            Self::AlreadyOver => None,
        }
    }
}

impl HasKind for HttpError {
    fn kind(&self) -> ErrorKind {
        match self {
            // The same head would hit the bound again: not a limit to wait out.
            Self::HeadTooLarge | Self::TooManyHeaders | Self::Malformed(_) => ErrorKind::Protocol,
            Self::AlreadyOver => ErrorKind::BadApiUsage,
        }
    }
}
