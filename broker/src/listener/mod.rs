//! Accept loops, one per listener. Each has a connection limit and stops on shutdown; the
//! CONNECT handshake runs under its deadline in the connection's own task, never here.

pub mod tcp;
