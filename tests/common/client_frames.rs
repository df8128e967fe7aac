//! WebSocket frames as a client sends them (masked), built by hand: for the frame reader's unit
//! tests, the raw-socket tests and the fuzz seeds. Included by path where needed.
#![allow(dead_code)]

/// The masking key of every frame built here.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const CONTINUE: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xa;

/// The header of a masked client frame announcing `len` payload bytes, mask key included.
pub fn client_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&len.to_be_bytes());
    }
    frame.extend_from_slice(&MASK);
    frame
}

/// A whole masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_header(fin, opcode, payload.len() as u64);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}
