//! The one typed refusal: a wire code for programs and a message for people, turned into the
//! protocol message that carries it in one place.
//!
//! Every "no" ncx sends its peer (a refused client, a refused service, a refused visitor) is a
//! [`Refusal`]; the code decides what the peer does (retry or not), the message what a person reads.

use ncx_proto::{ErrorCode, Message, Name, Text};

/// A refusal: why, for programs and for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, for programs.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// As received from a peer, its text escaped (see [`Text`]'s `Display`): it reaches log lines.
    pub fn from_wire(code: ErrorCode, message: &Text) -> Self {
        Refusal::new(code, message.to_string())
    }

    /// The session-ending `Error` message.
    pub fn to_error(&self) -> Message {
        Message::Error {
            code: self.code,
            message: Text::new(self.message.as_str()),
        }
    }

    /// The `ServiceRefused` answer to a registration of `service`.
    pub fn to_service_refused(&self, service: Name) -> Message {
        Message::ServiceRefused {
            service,
            code: self.code,
            message: Text::new(self.message.as_str()),
        }
    }

    /// The `VisitorStatus` that refuses a visitor.
    pub fn to_visitor_status(&self) -> Message {
        Message::VisitorStatus {
            refusal: Some((self.code, Text::new(self.message.as_str()))),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_carries_the_same_code_and_text() {
        let r = Refusal::new(ErrorCode::PortInUse, "port 7000 is in use");
        let service = Name::new("web").unwrap();
        match r.to_service_refused(service.clone()) {
            Message::ServiceRefused {
                service: s,
                code,
                message,
            } => assert_eq!(
                (s, code, message.as_str()),
                (service, r.code, "port 7000 is in use")
            ),
            other => panic!("{other:?}"),
        }
        match r.to_error() {
            Message::Error { code, message } => {
                assert_eq!(Refusal::from_wire(code, &message), r)
            }
            other => panic!("{other:?}"),
        }
        match r.to_visitor_status() {
            Message::VisitorStatus {
                refusal: Some((code, message)),
            } => assert_eq!(Refusal::from_wire(code, &message), r),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.to_string(), format!("port 7000 is in use ({})", r.code));
    }
}
