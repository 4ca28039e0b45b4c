//! P-DATA reassembly: turns a stream of PDVs into DIMSE messages.
//!
//! A pure state machine (no I/O): the association adapter feeds it each PDV
//! header and learns whether the bytes complete a command, belong to the
//! dataset of the current message, or break the protocol. Dataset bytes are
//! never copied here; the adapter streams them straight to the archive, which
//! is what keeps memory bounded for a 1 GB instance.

use super::dimse::{Command, CommandError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdvKind {
    Command,
    Data,
}

/// What the adapter must do with the PDV it just fed in.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More command fragments are needed.
    Pending,
    /// A complete command. If it announced a dataset, Data steps follow.
    Command { pc: u8, cmd: Command },
    /// These bytes are dataset content of the message on `pc`.
    Data { pc: u8, last: bool },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssemblyError {
    #[error("command set larger than {0} bytes")]
    CommandTooLarge(usize),
    #[error("dataset fragment on context {0} with no command announcing it")]
    UnexpectedData(u8),
    #[error("fragment on context {got} while a message on context {expected} is incomplete")]
    ContextSwitch { expected: u8, got: u8 },
    #[error("new command on context {0} before the previous dataset ended")]
    CommandDuringData(u8),
    #[error("malformed command set: {0}")]
    BadCommand(#[from] CommandError),
}

#[derive(Debug)]
enum State {
    Idle,
    Command { pc: u8, buf: Vec<u8> },
    Data { pc: u8 },
}

#[derive(Debug)]
pub struct Assembler {
    max_command: usize,
    state: State,
}

impl Assembler {
    /// `max_command` bounds the only buffer this machine owns; real command
    /// sets are a few hundred bytes. Memory over a whole association: at most
    /// 3 × `max_command` + the DIMSE decode of a full command set (checked by
    /// the `assembly` and `pdu` fuzz targets).
    pub fn new(max_command: usize) -> Self {
        Assembler {
            max_command,
            state: State::Idle,
        }
    }

    /// True while a message is half-received (used to refuse a release mid-message).
    pub fn in_message(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    pub fn feed(&mut self, pc: u8, kind: PdvKind, is_last: bool, data: &[u8]) -> Result<Step, AssemblyError> {
        match kind {
            PdvKind::Command => {
                let mut buf = match std::mem::replace(&mut self.state, State::Idle) {
                    State::Idle => Vec::new(),
                    State::Command { pc: expected, buf } if expected == pc => buf,
                    State::Command { pc: expected, .. } => {
                        return Err(AssemblyError::ContextSwitch { expected, got: pc });
                    }
                    State::Data { .. } => return Err(AssemblyError::CommandDuringData(pc)),
                };
                if buf.len() + data.len() > self.max_command {
                    return Err(AssemblyError::CommandTooLarge(self.max_command));
                }
                buf.extend_from_slice(data);
                if !is_last {
                    self.state = State::Command { pc, buf };
                    return Ok(Step::Pending);
                }
                let cmd = Command::decode(&buf)?;
                if cmd.has_dataset() {
                    self.state = State::Data { pc };
                }
                Ok(Step::Command { pc, cmd })
            }
            PdvKind::Data => match self.state {
                State::Data { pc: expected } if expected == pc => {
                    if is_last {
                        self.state = State::Idle;
                    }
                    Ok(Step::Data { pc, last: is_last })
                }
                State::Data { pc: expected } | State::Command { pc: expected, .. } => {
                    Err(AssemblyError::ContextSwitch { expected, got: pc })
                }
                State::Idle => Err(AssemblyError::UnexpectedData(pc)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_rq() -> Vec<u8> {
        Command::c_store_rq(3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3").encode()
    }

    #[test]
    fn fragmented_command_then_data() {
        let mut a = Assembler::new(1024);
        let bytes = store_rq();
        let (head, tail) = bytes.split_at(10);
        assert_eq!(a.feed(1, PdvKind::Command, false, head), Ok(Step::Pending));
        let step = a.feed(1, PdvKind::Command, true, tail).expect("command");
        assert!(matches!(step, Step::Command { pc: 1, .. }));
        assert!(a.in_message());
        assert_eq!(
            a.feed(1, PdvKind::Data, false, b"ab"),
            Ok(Step::Data { pc: 1, last: false })
        );
        assert_eq!(
            a.feed(1, PdvKind::Data, true, b"cd"),
            Ok(Step::Data { pc: 1, last: true })
        );
        assert!(!a.in_message());
    }

    #[test]
    fn echo_has_no_data_phase() {
        let mut a = Assembler::new(1024);
        let step = a.feed(3, PdvKind::Command, true, &Command::c_echo_rq(1).encode());
        assert!(matches!(step, Ok(Step::Command { pc: 3, .. })));
        assert!(!a.in_message());
        assert_eq!(
            a.feed(3, PdvKind::Data, true, b"x"),
            Err(AssemblyError::UnexpectedData(3))
        );
    }

    #[test]
    fn protocol_violations() {
        let mut a = Assembler::new(1024);
        a.feed(1, PdvKind::Command, true, &store_rq()).expect("cmd");
        assert_eq!(
            a.feed(3, PdvKind::Data, true, b"x"),
            Err(AssemblyError::ContextSwitch { expected: 1, got: 3 })
        );
        let mut a = Assembler::new(1024);
        a.feed(1, PdvKind::Command, true, &store_rq()).expect("cmd");
        assert_eq!(
            a.feed(1, PdvKind::Command, true, &store_rq()),
            Err(AssemblyError::CommandDuringData(1))
        );
        let mut a = Assembler::new(16);
        assert_eq!(
            a.feed(1, PdvKind::Command, true, &store_rq()),
            Err(AssemblyError::CommandTooLarge(16))
        );
        let mut a = Assembler::new(1024);
        assert!(matches!(
            a.feed(1, PdvKind::Command, true, b"\x08\x00\x10\x00\x00\x00\x00\x00"),
            Err(AssemblyError::BadCommand(_))
        ));
    }
}
