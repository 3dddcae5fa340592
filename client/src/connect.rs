//! Reaching a node: ask the balancer which one, connect to it pinned to the
//! cluster CA, open the control stream, and log in.

use fastchat_crypto::{Identity, SigningIdentity, transcript};
use fastchat_proto::PROTOCOL_VERSION;
use fastchat_proto::balancer::{BalancerRequest, BalancerResponse};
use fastchat_proto::control::{Request, Response};
use fastchat_proto::limits::MAX_CONTROL_FRAME;
use fastchat_transport::ClientEndpoint;
use fastchat_transport::quinn::Connection;
use fastchat_transport::{TransportError, connect, read_frame, write_frame};

use crate::control::Control;
use crate::error::ClientError;

/// How many times a client asks the balancer again when the node it was
/// given does not answer (it may have just died and not yet been dropped).
const NODE_ATTEMPTS: usize = 4;

/// Asks the balancer at `server` which node to use.
pub(crate) async fn pick_node(
    endpoint: &ClientEndpoint,
    server: &str,
) -> Result<String, ClientError> {
    let conn = connect(endpoint, server).await?;
    let result = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|_| ClientError::Disconnected)?;
        write_frame(&mut send, &BalancerRequest::PickNode, MAX_CONTROL_FRAME)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        let _ = send.finish();
        let mut buf = Vec::new();
        match read_frame::<BalancerResponse>(&mut recv, MAX_CONTROL_FRAME, &mut buf).await {
            Ok(Some(BalancerResponse::Node { addr })) => Ok(addr),
            Ok(Some(BalancerResponse::Error(e))) => Err(ClientError::Refused(e)),
            Ok(_) => Err(ClientError::UnexpectedReply),
            Err(_) => Err(ClientError::Disconnected),
        }
    }
    .await;
    conn.close(0u32.into(), b"thanks");
    result
}

/// How long a balancer has to answer before the next one is asked too.
const BALANCER_STAGGER: std::time::Duration = std::time::Duration::from_millis(400);

/// The balancer addresses in `server` (comma-separated), each one's own.
pub(crate) fn balancers(server: &str) -> Vec<&str> {
    server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Asks the balancers in `server` (comma-separated) which node to use: one
/// (picked at random, so clients spread), then, while it has not answered
/// within [`BALANCER_STAGGER`] or as soon as it failed, the next as well.
/// The first answer wins, so a dead balancer costs a client a fraction of
/// a second, not a timeout.
pub(crate) async fn pick_node_from_any(
    endpoint: &ClientEndpoint,
    server: &str,
) -> Result<String, ClientError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let list = balancers(server);
    if list.is_empty() {
        return Err(TransportError::BadAddress(server.to_string()).into());
    }
    let mut first = [0u8; 2];
    let _ = fastchat_crypto::random_bytes(&mut first);
    let start = u16::from_le_bytes(first) as usize % list.len();
    let order: Vec<&str> = list[start..]
        .iter()
        .chain(&list[..start])
        .copied()
        .collect();
    let mut next = 0;
    let mut asking = FuturesUnordered::new();
    let mut last = None;
    loop {
        if let Some(b) = order.get(next) {
            asking.push(pick_node(endpoint, b));
            next += 1;
        }
        let more = next < order.len();
        tokio::select! {
            Some(answer) = asking.next() => match answer {
                Ok(node) => return Ok(node),
                Err(e) => last = Some(e),
            },
            _ = tokio::time::sleep(BALANCER_STAGGER), if more => {}
            else => break,
        }
        if asking.is_empty() && next >= order.len() {
            break;
        }
    }
    Err(last.unwrap_or(ClientError::Disconnected))
}

/// Connects to a node chosen by a balancer and opens the control stream.
pub(crate) async fn reach_node(
    endpoint: &ClientEndpoint,
    server: &str,
) -> Result<(Connection, Control), ClientError> {
    let mut last = None;
    for attempt in 0..NODE_ATTEMPTS {
        let node = pick_node_from_any(endpoint, server).await?;
        match connect(endpoint, &node).await {
            Ok(conn) => {
                let control = Control::open(&conn).await?;
                tracing::debug!(%node, "connected to node");
                return Ok((conn, control));
            }
            // A node whose certificate we do not trust will not become
            // trustworthy on a retry.
            Err(e @ TransportError::UntrustedPeer(_)) => return Err(e.into()),
            Err(e) => {
                tracing::debug!(%node, attempt, error = %e, "node unreachable; asking the balancer again");
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(300 * (attempt as u64 + 1)))
                    .await;
            }
        }
    }
    Err(last
        .map(ClientError::from)
        .unwrap_or(ClientError::Disconnected))
}

/// Registers `name` with `identity` on an open control stream, binding
/// `login` as the key that signs its logins.
pub(crate) async fn register(
    control: &Control,
    name: &str,
    identity: &Identity,
    login: &SigningIdentity,
) -> Result<(), ClientError> {
    let public_key = identity.public().der().to_vec();
    let login_key = login.public();
    let proof = identity.sign(&transcript::register(name, &public_key, &login_key))?;
    match control
        .request(Request::Register {
            version: PROTOCOL_VERSION,
            name: name.to_string(),
            public_key,
            login_key,
            proof,
        })
        .await?
    {
        Response::Registered => Ok(()),
        _ => Err(ClientError::UnexpectedReply),
    }
}

/// Logs in by signing the node's challenge; returns how many items wait.
/// Signs with the Ed25519 login key when the node holds it (tens of
/// microseconds), else with the RSA identity (milliseconds) and then binds
/// the login key, so the next login is cheap.
pub(crate) async fn login(
    control: &Control,
    name: &str,
    identity: &Identity,
    login: &SigningIdentity,
) -> Result<u64, ClientError> {
    let (nonce, bound) = match control
        .request(Request::Hello {
            version: PROTOCOL_VERSION,
            name: name.to_string(),
        })
        .await?
    {
        Response::Challenge { nonce, login_key } => (nonce, login_key),
        _ => return Err(ClientError::UnexpectedReply),
    };
    let ours = login.public();
    let transcript = transcript::login(name, &nonce, control.binding());
    let signature = if bound == Some(ours) {
        login.sign(&transcript)
    } else {
        identity.sign(&transcript)?
    };
    let pending = match control.request(Request::Login { signature }).await? {
        Response::LoggedIn { pending } => pending,
        _ => return Err(ClientError::UnexpectedReply),
    };
    if bound != Some(ours) {
        let proof = identity.sign(&transcript::login_key(name, &ours))?;
        match control
            .request(Request::BindLoginKey {
                login_key: ours,
                proof,
            })
            .await?
        {
            Response::Done => {}
            _ => return Err(ClientError::UnexpectedReply),
        }
    }
    Ok(pending)
}

/// What the balancer at `server` knows: its strategy and its live nodes.
pub async fn cluster_status(
    server: &str,
    ca: &[fastchat_transport::quinn::rustls::pki_types::CertificateDer<'static>],
) -> Result<(String, Vec<fastchat_proto::balancer::NodeReport>), ClientError> {
    let endpoint = fastchat_transport::client_endpoint(ca, None)?;
    // The first balancer that answers speaks for the cluster.
    let mut conn = None;
    let mut last = None;
    for b in balancers(server) {
        match connect(&endpoint, b).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let conn = match (conn, last) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(TransportError::BadAddress(server.to_string()).into()),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|_| ClientError::Disconnected)?;
    write_frame(&mut send, &BalancerRequest::Status, MAX_CONTROL_FRAME)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    let _ = send.finish();
    let mut buf = Vec::new();
    let reply = read_frame::<BalancerResponse>(&mut recv, MAX_CONTROL_FRAME, &mut buf)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    conn.close(0u32.into(), b"thanks");
    match reply {
        Some(BalancerResponse::Status { strategy, nodes }) => Ok((strategy, nodes)),
        Some(BalancerResponse::Error(e)) => Err(ClientError::Refused(e)),
        _ => Err(ClientError::UnexpectedReply),
    }
}
