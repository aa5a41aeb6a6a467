//! Reaching agents from the CLI: clients, connection, error messages.

use crate::*;

/// A failed call to an agent, for the CLI's error line.
pub(crate) fn rpc_error(agent: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{agent}: {}", status_text(agent, s))
}

/// A status for a person: its message, its code, the transport's reason
/// when the call never reached the agent, and for a TLS agent a hint (a
/// server refusing a client certificate just closes the connection).
pub(crate) fn status_text(agent: &str, s: &tonic::Status) -> String {
    let mut text = format!("{} ({:?})", s.message(), s.code());
    let mut cause = std::error::Error::source(s);
    let transport = cause.is_some();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    if transport && agent.starts_with("https://") {
        text.push_str(
            " (TLS: ARBOR_TLS_CA must name the agents' CA, and an agent requiring client certificates needs ARBOR_TLS_CERT and ARBOR_TLS_KEY)",
        );
    }
    text
}

pub(crate) async fn admin_client(
    agent: &str,
) -> Result<arbor::proto::v1::admin_service_client::AdminServiceClient<Authed>> {
    Ok(
        arbor::proto::v1::admin_service_client::AdminServiceClient::new(
            arbor::grpc::client::authed(connect(agent).await?),
        ),
    )
}

/// A channel to an agent (TLS for `https://`, from `ARBOR_TLS_*`).
pub(crate) async fn connect(agent: &str) -> Result<tonic::transport::Channel> {
    arbor::grpc::client::endpoint(agent)
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("connect to agent {agent}"))
}

pub(crate) async fn audit_client(agent: &str) -> Result<AuditServiceClient<Authed>> {
    let client = AuditServiceClient::new(arbor::grpc::client::authed(connect(agent).await?));
    Ok(client.max_decoding_message_size(arbor::grpc::client::MAX_MESSAGE_BYTES))
}

/// First pause before polling a running compare (short compares end in
/// milliseconds); it doubles up to [`RUN_POLL_MAX`].
pub(crate) const RUN_POLL_FIRST: Duration = Duration::from_millis(20);
/// Longest pause between two polls of a running compare.
pub(crate) const RUN_POLL_MAX: Duration = Duration::from_secs(1);
/// Deadline of one poll of a running compare.
pub(crate) const RUN_POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive failed polls before the agent counts as lost.
pub(crate) const RUN_POLL_FAILURES: u32 = 10;

/// Polls a detached run until it is no longer `running`.
pub(crate) async fn wait_for_run(
    client: &mut AuditServiceClient<Authed>,
    agent: &str,
    mut summary: RunSummary,
) -> Result<RunSummary> {
    let mut pause = RUN_POLL_FIRST;
    let mut failures = 0;
    while summary.status == RunStatus::Running {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RUN_POLL_MAX);
        let mut request = tonic::Request::new(pb::GetRunRequest {
            run_id: summary.run_id.clone(),
        });
        request.set_timeout(RUN_POLL_TIMEOUT);
        match client.get_run(request).await {
            Ok(r) => {
                summary = r.into_inner().into();
                failures = 0;
            }
            Err(s) => {
                failures += 1;
                if failures >= RUN_POLL_FAILURES {
                    bail!(
                        "lost {agent} while run {} was running: {} (`arbor runs show {}` \
                         tells how it ended once the agent is back)",
                        summary.run_id,
                        status_text(agent, &s),
                        summary.run_id
                    );
                }
                tracing::info!(reason = %s.message(), "polling the run failed; retrying");
            }
        }
    }
    Ok(summary)
}

/// How long one health check may take before the agent counts as hung.
pub(crate) const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits while the agent at `addr` answers NOT_SERVING (still indexing).
pub(crate) async fn wait_serving(addr: &str, deadline: Instant) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    loop {
        let endpoint = arbor::grpc::client::endpoint(addr).map_err(|e| anyhow::anyhow!("{e}"))?;
        // A process that accepts connections but never answers (stopped,
        // wedged) must not hang the CLI: each check has its own deadline.
        let check = async {
            match endpoint.connect().await {
                Ok(channel) => match HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(r) => Ok(r.into_inner().status),
                    Err(s) => Err(s.message().to_owned()),
                },
                Err(e) => Err(e.to_string()),
            }
        };
        let Ok(state) = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, check).await else {
            bail!(
                "agent {addr} did not answer its health check within {} s (is the process stopped or overloaded?)",
                HEALTH_CHECK_TIMEOUT.as_secs()
            );
        };
        match state {
            Ok(s)
                if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                return Ok(());
            }
            // Unreachable: do not wait; the compare records a failed run
            // naming the agent.
            Err(_) => return Ok(()),
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => bail!("agent {addr} is still indexing after the --wait period"),
        }
    }
}
