//! The descent over real gRPC on loopback TCP: agents serve RocksDB indexes
//! through `AgentService`, the engine talks to them through `GrpcPeer`.
//! Drift must equal the oracle (a set difference), bad requests must be
//! refused with precise codes while the agent keeps serving, and an agent
//! that dies mid-compare must fail the compare, not shorten its report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arbor::grpc::agent::AgentServer;
use arbor::grpc::client::{GrpcPeer, RetryPolicy};
use arbor::proto::v1 as pb;
use arbor::proto::v1::agent_service_client::AgentServiceClient;
use arbor::proto::v1::agent_service_server::AgentServiceServer;
use arbor_agent::dataset::{AgentState, ServiceLimits};
use arbor_index::{Description, Index, IndexConfig, IndexError, Leaf};
use arbor_record::{DatasetKeys, Record, Value, tuple_bytes};
use arbor_sync::{
    CompareError, CompareOptions, DriftKind, LocalPeer, Peer, PeerError, compare_collect,
};
use arbor_tree::{Node, Prefix};
use tempfile::TempDir;
use tonic::Code;

type Rows = BTreeMap<i64, i64>;

/// An agent serving datasets on a loopback port, in its own runtime so that
/// dropping the runtime kills it like a crashed process (connections too).
struct Agent {
    address: String,
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<AgentState>,
}

impl Agent {
    fn start(datasets: HashMap<String, Arc<Index>>, limits: ServiceLimits) -> Agent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(AgentState::new(datasets, limits));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = AgentServiceServer::new(AgentServer::new(Arc::clone(&state)));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Agent {
            address,
            runtime: Some(runtime),
            state,
        }
    }

    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(secret: &[u8]) -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(secret),
        schema_fingerprint: [4; 32],
    }
}

fn index(dir: &TempDir, name: &str, secret: &[u8], rows: &Rows) -> Arc<Index> {
    let index = Index::open(dir.path().join(name), config(secret)).unwrap();
    index
        .build(
            rows.iter().map(|(&k, &v)| {
                Ok::<_, IndexError>(Record::new(
                    vec![Value::Integer(k.into())],
                    vec![Value::Integer(v.into())],
                ))
            }),
            None,
        )
        .unwrap();
    Arc::new(index)
}

fn oracle(left: &Rows, right: &Rows) -> BTreeSet<(DriftKind, Vec<u8>)> {
    let key = |k: &i64| tuple_bytes(&[Value::Integer((*k).into())]);
    let mut out = BTreeSet::new();
    for (k, v) in left {
        match right.get(k) {
            None => {
                out.insert((DriftKind::MissingRight, key(k)));
            }
            Some(w) if w != v => {
                out.insert((DriftKind::Changed, key(k)));
            }
            _ => {}
        }
    }
    for k in right.keys().filter(|k| !left.contains_key(k)) {
        out.insert((DriftKind::MissingLeft, key(k)));
    }
    out
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        call_timeout: Duration::from_secs(20),
        span: None,
    }
}

/// A deterministic dataset and a drifted copy of it.
fn drifted(n: i64, drift_every: i64) -> (Rows, Rows) {
    let left: Rows = (0..n).map(|k| (k * 7, k)).collect();
    let mut right = left.clone();
    for k in (0..n).filter(|k| k % drift_every == 0) {
        match k / drift_every % 3 {
            0 => {
                right.remove(&(k * 7));
            }
            1 => {
                right.insert(k * 7, -k);
            }
            _ => {
                right.insert(k * 7 + 1, k);
            }
        }
    }
    (left, right)
}

#[test]
fn drift_over_grpc_equals_the_oracle_and_the_local_compare() {
    let dir = TempDir::new().unwrap();
    let rt = client_runtime();
    let _in_runtime = rt.enter();
    for (n, every) in [(0, 1), (1, 1), (3_000, 1), (20_000, 97), (50_000, 5_001)] {
        let (l_rows, r_rows) = drifted(n, every);
        let (li, ri) = (
            index(&dir, &format!("l{n}"), b"s", &l_rows),
            index(&dir, &format!("r{n}"), b"s", &r_rows),
        );
        let a = Agent::start(
            HashMap::from([("orders".to_string(), Arc::clone(&li))]),
            ServiceLimits::default(),
        );
        let b = Agent::start(
            HashMap::from([("orders".to_string(), Arc::clone(&ri))]),
            ServiceLimits::default(),
        );
        let (pa, pb) = (
            GrpcPeer::new(&a.address, "orders", fast_retry()).unwrap(),
            GrpcPeer::new(&b.address, "orders", fast_retry()).unwrap(),
        );
        let (drift, stats) = rt
            .block_on(compare_collect(&pa, &pb, &CompareOptions::default()))
            .unwrap();
        let got: BTreeSet<_> = drift.iter().map(|d| (d.kind, d.key.clone())).collect();
        assert_eq!(got, oracle(&l_rows, &r_rows), "n = {n}");
        assert_eq!(got.len(), drift.len());
        // The same compare in process takes the same path.
        let (ll, lr) = (
            LocalPeer::new(&li, "orders").unwrap(),
            LocalPeer::new(&ri, "orders").unwrap(),
        );
        let (_, local) = rt
            .block_on(compare_collect(&ll, &lr, &CompareOptions::default()))
            .unwrap();
        assert_eq!(
            (
                stats.round_trips,
                stats.nodes_received,
                stats.leaves_received
            ),
            (
                local.round_trips,
                local.nodes_received,
                local.leaves_received
            )
        );
        if got.is_empty() {
            assert_eq!(stats.round_trips, 1, "in sync after one round trip");
        }
        // Sessions were ended, not left to expire.
        assert_eq!((a.state.open_sessions(), b.state.open_sessions()), (0, 0));
    }
}

#[test]
fn a_key_id_mismatch_is_an_error_not_drift() {
    let dir = TempDir::new().unwrap();
    let rows: Rows = (0..500).map(|k| (k, k)).collect();
    let a = Agent::start(
        HashMap::from([("d".to_string(), index(&dir, "a", b"one secret", &rows))]),
        ServiceLimits::default(),
    );
    let b = Agent::start(
        HashMap::from([("d".to_string(), index(&dir, "b", b"other secret", &rows))]),
        ServiceLimits::default(),
    );
    let rt = client_runtime();
    let _in_runtime = rt.enter();
    let (pa, pb) = (
        GrpcPeer::new(&a.address, "d", fast_retry()).unwrap(),
        GrpcPeer::new(&b.address, "d", fast_retry()).unwrap(),
    );
    match rt.block_on(compare_collect(&pa, &pb, &CompareOptions::default())) {
        Err(CompareError::Incompatible { what, .. }) => assert_eq!(what, "hashing key id"),
        other => panic!("expected an incompatibility, got {other:?}"),
    }
}

#[test]
fn malformed_requests_are_refused_and_the_agent_keeps_serving() {
    let dir = TempDir::new().unwrap();
    let rows: Rows = (0..2_000).map(|k| (k, k)).collect();
    let limits = ServiceLimits {
        max_parents_per_request: 8,
        max_ranges_per_request: 8,
        ..ServiceLimits::default()
    };
    let agent = Agent::start(
        HashMap::from([("d".to_string(), index(&dir, "a", b"s", &rows))]),
        limits,
    );
    let rt = client_runtime();
    let _in_runtime = rt.enter();
    rt.block_on(async {
        let mut c = AgentServiceClient::connect(agent.address.clone())
            .await
            .unwrap();
        let session = c
            .describe(pb::DescribeRequest {
                dataset: "d".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session;
        let nodes = |level, parents: Vec<u64>, session| pb::GetNodesRequest {
            dataset: "d".into(),
            level,
            parents,
            session,
        };
        let cases: Vec<(pb::GetNodesRequest, Code, &str)> = vec![
            (
                nodes(2, vec![0x100], session),
                Code::InvalidArgument,
                "does not fit level 2",
            ),
            (
                nodes(16, vec![0], session),
                Code::InvalidArgument,
                "has no children",
            ),
            (
                nodes(99, vec![0], session),
                Code::InvalidArgument,
                "has no children",
            ),
            // Parents are gap-encoded: a zero gap repeats a parent, and a
            // gap past 64 bits wraps.
            (
                nodes(1, vec![3, 0], session),
                Code::InvalidArgument,
                "must ascend",
            ),
            (
                nodes(1, vec![3, u64::MAX], session),
                Code::InvalidArgument,
                "must ascend",
            ),
            (
                nodes(1, (0..9).collect(), session),
                Code::InvalidArgument,
                "at most 8 per request",
            ),
            (
                nodes(1, vec![1], session ^ 2),
                Code::NotFound,
                "no open session",
            ),
            (
                pb::GetNodesRequest {
                    dataset: "nope".into(),
                    level: 0,
                    parents: vec![0],
                    session,
                },
                Code::NotFound,
                "unknown dataset",
            ),
        ];
        for (req, code, text) in cases {
            let s = c.get_nodes(req.clone()).await.unwrap_err();
            assert_eq!(s.code(), code, "{req:?}: {s:?}");
            assert!(s.message().contains(text), "{req:?}: {s:?}");
        }
        let leaves = |ranges: Vec<(u32, u64)>| pb::StreamLeavesRequest {
            dataset: "d".into(),
            ranges: ranges
                .into_iter()
                .map(|(level, prefix)| pb::Range { level, prefix })
                .collect(),
            session,
        };
        for (req, text) in [
            (leaves(vec![(17, 0)]), "beyond 16"),
            (leaves(vec![(1, 16)]), "does not fit level 1"),
            (
                leaves(vec![(1, 2), (2, 0x21)]),
                "not ascending and disjoint",
            ),
        ] {
            let s = c.stream_leaves(req).await.map(|_| ()).unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(s.message().contains(text), "{s:?}");
        }
        let s = c
            .describe(pb::DescribeRequest {
                dataset: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        let s = c
            .describe(pb::DescribeRequest {
                dataset: "d".into(),
                key_id: vec![1, 2, 3],
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().contains("DescribeRequest.key_id: 3 bytes"),
            "{s:?}"
        );
        // Still serving: a valid request right after.
        let ok = c
            .get_nodes(nodes(0, vec![0], session))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.counts.len(), 16);
        let mut stream = c
            .stream_leaves(leaves(vec![(0, 0)]))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(batch) = stream.message().await.unwrap() {
            n += batch.leaves.len();
        }
        assert_eq!(n, 2_000);
    });
}

/// Delegates to a gRPC peer, but kills its agent on the first children request.
struct DiesMidCompare<'a> {
    inner: GrpcPeer,
    agent: std::sync::Mutex<&'a mut Agent>,
    killed: AtomicBool,
}

impl Peer for DiesMidCompare<'_> {
    fn dataset(&self) -> &str {
        self.inner.dataset()
    }
    async fn describe(&self) -> Result<Description, PeerError> {
        self.inner.describe().await
    }
    async fn children(&self, parents: &[Prefix]) -> Result<Vec<(Prefix, Node)>, PeerError> {
        if !self.killed.swap(true, Ordering::SeqCst) {
            self.agent.lock().unwrap().kill();
        }
        self.inner.children(parents).await
    }
    async fn leaves(&self, ranges: &[Prefix]) -> Result<Vec<Leaf>, PeerError> {
        self.inner.leaves(ranges).await
    }
}

#[test]
fn an_agent_dying_mid_compare_fails_the_compare() {
    let dir = TempDir::new().unwrap();
    let (l_rows, r_rows) = drifted(5_000, 50);
    let a = Agent::start(
        HashMap::from([("d".to_string(), index(&dir, "a", b"s", &l_rows))]),
        ServiceLimits::default(),
    );
    let mut b = Agent::start(
        HashMap::from([("d".to_string(), index(&dir, "b", b"s", &r_rows))]),
        ServiceLimits::default(),
    );
    let address = b.address.clone();
    let rt = client_runtime();
    let _in_runtime = rt.enter();
    let pa = GrpcPeer::new(&a.address, "d", fast_retry()).unwrap();
    let pb = DiesMidCompare {
        inner: GrpcPeer::new(&address, "d", fast_retry()).unwrap(),
        agent: std::sync::Mutex::new(&mut b),
        killed: AtomicBool::new(false),
    };
    match rt.block_on(compare_collect(&pa, &pb, &CompareOptions::default())) {
        Err(CompareError::Peer {
            side,
            source: PeerError::Unavailable(reason),
        }) => {
            assert_eq!(side, arbor_sync::Side::Right);
            assert!(reason.contains(&address[7..]), "{reason}");
        }
        other => panic!("expected the right peer to be unavailable, got {other:?}"),
    }
    // The surviving agent's session was still released.
    assert_eq!(a.state.open_sessions(), 0);
}

#[test]
fn ingested_changes_reach_the_tree_of_a_fresh_build_and_bad_ones_are_refused() {
    use arbor::proto::v1::ingest_service_client::IngestServiceClient;
    use arbor::proto::v1::ingest_service_server::IngestServiceServer;
    use arbor_agent::dataset::Dataset;
    use arbor_record::ValueKind;
    use arbor_source::{ColumnMapping, Mapping};
    use pb::change_event::Op;
    use pb::typed_value::Value as V;

    let dir = TempDir::new().unwrap();
    let mapping = Mapping::new(
        vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
        vec![ColumnMapping::new("v", "v", ValueKind::Integer)],
    )
    .unwrap();
    let rows: Rows = (0..1_000).map(|k| (k, k)).collect();
    let live = index(&dir, "live", b"s", &rows);
    let pulled = index(&dir, "pulled", b"s", &rows);
    // "d" takes pushed changes (capture mode push); "pulled" reads its own.
    let mut pushed = Dataset::new(Arc::clone(&live), None, Some(mapping.clone()));
    pushed.accepts_push = true;
    let datasets = HashMap::from([
        ("d".to_string(), Arc::new(pushed)),
        (
            "pulled".to_string(),
            Arc::new(Dataset::new(Arc::clone(&pulled), None, Some(mapping))),
        ),
    ]);
    let state = Arc::new(AgentState::with_datasets(
        datasets,
        ServiceLimits::default(),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let rt = client_runtime();
    let service = IngestServiceServer::new(arbor::grpc::ingest::IngestServer::new(state));
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let int = |i: i64| pb::TypedValue {
        value: Some(V::Integer(i.to_string())),
    };
    let upsert = |k: i64, v: i64| pb::ChangeEvent {
        op: Op::Upsert as i32,
        key: vec![int(k)],
        values: vec![int(v)],
    };
    let delete = |k: i64| pb::ChangeEvent {
        op: Op::Delete as i32,
        key: vec![int(k)],
        values: vec![],
    };
    rt.block_on(async {
        let mut c = IngestServiceClient::connect(address).await.unwrap();
        let r = c
            .ingest_changes(pb::IngestRequest {
                dataset: "d".into(),
                changes: vec![
                    upsert(5, -5),
                    upsert(5000, 1),
                    delete(7),
                    delete(99_999),
                    upsert(8, 8),
                ],
                watermark: b"outbox:42".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.inserted, r.updated, r.unchanged, r.deleted, r.absent),
            (1, 1, 1, 1, 1)
        );
        let bad = [
            (
                pb::ChangeEvent {
                    op: 0,
                    key: vec![int(1)],
                    values: vec![int(1)],
                },
                "op is not set",
            ),
            (
                pb::ChangeEvent {
                    op: Op::Upsert as i32,
                    key: vec![int(1)],
                    values: vec![],
                },
                "value columns",
            ),
            (
                pb::ChangeEvent {
                    op: Op::Upsert as i32,
                    key: vec![int(1)],
                    values: vec![pb::TypedValue {
                        value: Some(V::Text("x".into())),
                    }],
                },
                "expects integer",
            ),
            (
                pb::ChangeEvent {
                    op: Op::Delete as i32,
                    key: vec![pb::TypedValue {
                        value: Some(V::Null(true)),
                    }],
                    values: vec![],
                },
                "NULL",
            ),
            (
                pb::ChangeEvent {
                    op: Op::Delete as i32,
                    key: vec![pb::TypedValue { value: None }],
                    values: vec![],
                },
                "no value set",
            ),
        ];
        for (change, text) in bad {
            let s = c
                .ingest_changes(pb::IngestRequest {
                    dataset: "d".into(),
                    changes: vec![upsert(1, 2), change],
                    watermark: vec![],
                })
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(
                s.message().contains("changes[1]") && s.message().contains(text),
                "{s:?}"
            );
        }
        let s = c
            .ingest_changes(pb::IngestRequest {
                dataset: "nope".into(),
                changes: vec![],
                watermark: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        // A dataset whose capture reads its system refuses pushed changes:
        // they could falsify its index.
        let s = c
            .ingest_changes(pb::IngestRequest {
                dataset: "pulled".into(),
                changes: vec![delete(5)],
                watermark: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains("push"), "{s:?}");
        // A watermark is copied into every later run: it is bounded.
        let s = c
            .ingest_changes(pb::IngestRequest {
                dataset: "d".into(),
                changes: vec![upsert(1, 3)],
                watermark: vec![b'w'; arbor::grpc::ingest::MAX_WATERMARK_BYTES + 1],
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("watermark"), "{s:?}");
    });
    let p = pulled.snapshot().unwrap();
    assert_eq!(
        p.describe().unwrap().count(),
        rows.len() as u64,
        "nothing reached the pulled dataset"
    );
    // A refused batch applied nothing (row 1 still has value 1); the good one
    // reached exactly the tree of a fresh build of the expected rows.
    let mut want = rows.clone();
    want.insert(5, -5);
    want.insert(5000, 1);
    want.remove(&7);
    let fresh = index(&dir, "fresh", b"s", &want);
    let (a, b) = (live.snapshot().unwrap(), fresh.snapshot().unwrap());
    assert_eq!(a.root().unwrap(), b.root().unwrap());
    assert_eq!(
        a.describe().unwrap().watermark.as_deref(),
        Some(&b"outbox:42"[..])
    );
}
