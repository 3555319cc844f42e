//! Port terms (`tcp/443`, `udp/9000-9100`, `icmp`, `any`, ...), modes and the `packet_sockets`
//! setting, parsed from their policy spelling. All are case-sensitive: `TCP/80` is rejected rather
//! than guessed at.

use std::str::FromStr;

use super::{Mode, PacketSockets, PortTerm, Protocol};

/// Why a string is not a port term.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortTermError {
    #[error("expected tcp/N, tcp/N-M, udp/N, udp/N-M, tcp, udp, icmp or any")]
    Syntax,
    #[error("unknown protocol `{protocol}`; the protocols are tcp, udp and icmp, in lowercase")]
    UnknownProtocol { protocol: String },
    #[error("`{protocol}` takes no port")]
    NoPortAllowed { protocol: &'static str },
    #[error("port 0 is not a port; ports are 1 to 65535")]
    PortZero,
    /// `port` as written: it may not even fit in a `u64`.
    #[error("port {port} is out of range; ports are 1 to 65535")]
    PortTooLarge { port: String },
    #[error("the range {first}-{last} runs backwards; write {last}-{first}")]
    Reversed { first: u16, last: u16 },
}

impl FromStr for PortTerm {
    type Err = PortTermError;

    fn from_str(term: &str) -> Result<Self, Self::Err> {
        let (name, ports) = match term.split_once('/') {
            Some((name, ports)) => (name, Some(ports)),
            None => (term, None),
        };
        let protocol = match name {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" | "any" => {
                return match ports {
                    None if name == "icmp" => Ok(Self::Icmp),
                    None => Ok(Self::Any),
                    Some(_) => Err(PortTermError::NoPortAllowed {
                        protocol: if name == "icmp" { "icmp" } else { "any" },
                    }),
                };
            }
            _ if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()) => {
                return Err(PortTermError::UnknownProtocol {
                    protocol: name.to_owned(),
                });
            }
            _ => return Err(PortTermError::Syntax),
        };
        let Some(ports) = ports else {
            return Ok(Self::Range {
                protocol,
                first: 1,
                last: u16::MAX,
            });
        };
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => {
                let only = port(ports)?;
                (only, only)
            }
        };
        if first > last {
            return Err(PortTermError::Reversed { first, last });
        }
        Ok(Self::Range {
            protocol,
            first,
            last,
        })
    }
}

/// Digits only: `u16::from_str` would also take a leading `+`, which no one means in a port.
fn port(text: &str) -> Result<u16, PortTermError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortTermError::Syntax);
    }
    match text.parse::<u16>() {
        Ok(0) => Err(PortTermError::PortZero),
        Ok(port) => Ok(port),
        // All digits, so the only way to fail is to be too large.
        Err(_) => Err(PortTermError::PortTooLarge {
            port: text.to_owned(),
        }),
    }
}

/// The value is not `"enforce"` or `"audit"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {value:?}; expected \"enforce\" or \"audit\"")]
pub struct UnknownMode {
    pub value: String,
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "enforce" => Ok(Self::Enforce),
            "audit" => Ok(Self::Audit),
            _ => Err(UnknownMode {
                value: value.to_owned(),
            }),
        }
    }
}

/// The value is not `"deny"` or `"allow"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown packet_sockets value {value:?}; expected \"deny\" or \"allow\"")]
pub struct UnknownPacketSockets {
    pub value: String,
}

impl FromStr for PacketSockets {
    type Err = UnknownPacketSockets;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            _ => Err(UnknownPacketSockets {
                value: value.to_owned(),
            }),
        }
    }
}
