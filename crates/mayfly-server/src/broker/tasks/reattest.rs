//! Re-attestation: a long-lived task lives on only while its starter's evidence still
//! proves the same workload and policy still allows the task.

use crate::attest::task::TaskIdentity;
use crate::attest::{AttestError, WorkloadIdentity};
use crate::broker::{Broker, BrokerError, Caller, Forbidden, InvalidRequest, Unavailable};
use crate::ledger::{AuditEvent, TaskRecord};
use serde_json::json;
use std::net::IpAddr;

impl Broker {
    /// Re-checks a long-lived task against its starter's evidence as it is now (a
    /// projected token re-read from disk, say): the evidence must still verify, prove
    /// the same workload with the same bound context, and policy must still allow the
    /// task. Anything else ends the task, revoking everything issued under it. A
    /// failure to check (issuer keys or storage unavailable) changes nothing.
    pub async fn reattest_task(
        &self,
        id: &str,
        task_token: &str,
        evidence: (&str, &str),
        source_ip: IpAddr,
    ) -> Result<TaskRecord, BrokerError> {
        let (token_type, token) = evidence;
        let holder = self.task_caller(task_token, id, source_ip).await?;
        if holder.task.id != id {
            return Err(Forbidden::ReattestWithOtherToken { task: id.to_owned(), holder: holder.task.id }.into());
        }
        if let Some(parent) = &holder.task.parent_id {
            return Err(InvalidRequest::SubTaskReattested { task: id.to_owned(), parent: parent.clone() }.into());
        }
        if token_type != mayfly_proto::TOKEN_TYPE_JWT && token_type != mayfly_proto::TOKEN_TYPE_ID_TOKEN {
            return Err(InvalidRequest::ReattestNeedsPlatformJwt.into());
        }
        let now = crate::clock::now_unix();
        let why = match self.attest(token_type, token, source_ip, now).await {
            // Cannot be checked now rather than proven wrong: the issuer's keys are out of
            // reach (an unknown key may be a rotation not yet fetched), the clocks disagree,
            // or storage failed. Nothing changes; the holder asks again.
            Err(BrokerError::Attest(e @ (AttestError::JwksUnavailable { .. } | AttestError::Ledger(_)))) => {
                metrics::counter!("mayfly_task_reattestations_total", "outcome" => "unavailable").increment(1);
                return Err(BrokerError::Attest(e));
            }
            Err(BrokerError::Attest(e @ (AttestError::UnknownKey { .. } | AttestError::NotYetValid))) => {
                metrics::counter!("mayfly_task_reattestations_total", "outcome" => "unavailable").increment(1);
                return Err(Unavailable::EvidenceUncheckable(e).into());
            }
            Err(BrokerError::Attest(e)) => format!("its starter's evidence no longer verifies ({e})"),
            Err(other) => return Err(other),
            Ok(Caller::Task(_)) => return Err(InvalidRequest::NotPlatformEvidence.into()),
            Ok(Caller::Workload(w)) => match self.still_the_starter(&holder, &w, source_ip, now) {
                Ok(policies) => {
                    let detail = json!({"task_id": id, "attestor": w.attestor, "policies": policies,
                                        "source_ip": source_ip.to_string()});
                    self.ledger
                        .audit(AuditEvent::new("task.reattested", Some(holder.spiffe_id.to_string()), detail))
                        .await?;
                    metrics::counter!("mayfly_task_reattestations_total", "outcome" => "ok").increment(1);
                    return Ok(holder.task);
                }
                Err(why) => why,
            },
        };
        metrics::counter!("mayfly_task_reattestations_total", "outcome" => "ended").increment(1);
        self.end_task(id, "mayfly", Some(&format!("re-attestation failed: {why}"))).await?;
        Err(BrokerError::TaskEnded { task: id.to_owned(), why })
    }

    /// Whether freshly attested `w` is still the workload that started `holder`'s task,
    /// in the same bound context, and still allowed it by policy: the deciding
    /// policies, or what no longer holds.
    fn still_the_starter(
        &self,
        holder: &TaskIdentity,
        w: &WorkloadIdentity,
        source_ip: IpAddr,
        now: i64,
    ) -> Result<Vec<String>, String> {
        let task = &holder.task;
        if w.spiffe_id.to_string() != task.creator {
            return Err(format!("the evidence now proves {}, not its starter {}", w.spiffe_id, task.creator));
        }
        if let Some((key, _)) =
            self.bound_context(&holder.attributes).iter().find(|(k, v)| w.attributes.get(*k) != Some(v))
        {
            return Err(format!("its starter's {key} changed since the task started"));
        }
        let decision = self.redecide_task(holder, w, source_ip, now);
        if decision.allowed {
            Ok(decision.policies)
        } else {
            Err(format!("policy no longer allows it ({})", decision.reason()))
        }
    }
}
