//! Real engines for tests (nats-server lives in `fastchat_node::NatsServer`,
//! which `fastchat up` uses too): each helper starts its server as a child process
//! with its data in a temp dir, on a free loopback port, and stops it when
//! dropped. A missing binary is a test failure that says how to install it.

pub mod postgres;

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it next).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
