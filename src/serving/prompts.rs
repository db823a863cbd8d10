//! Which prompt versions answer a rerank: the request's `p_gen` (a label, an A/B split by a
//! stable hash of the user, or a version) and the production `p_rank` and `p_sum`; label
//! rows and templates come from the caches.

use std::collections::HashMap;
use std::sync::Arc;

use super::cache::{LabelKey, TemplateKey};
use super::{PromptSelector, RerankError, RerankRequest, Reranker};
use crate::agp::prompt::PromptName;
use crate::store::prompts::{LabelRow, PRODUCTION, SplitArm};

/// The prompts that answer one rerank: (version, template) each.
#[derive(Debug, Clone)]
pub struct Prompts {
    /// `p_gen`: writes the profile.
    pub profile: (i32, Arc<String>),
    /// `p_rank`: ranks the candidates.
    pub rank: (i32, Arc<String>),
    /// `p_sum`: summarizes items; `None` when summaries are off.
    pub summary: Option<(i32, Arc<String>)>,
}

impl Prompts {
    /// The `p_gen` version.
    pub fn profile_version(&self) -> i32 {
        self.profile.0
    }

    /// Versions of every prompt used, by name.
    pub fn versions(&self) -> HashMap<&'static str, i32> {
        let mut v = HashMap::from([
            (PromptName::PGen.as_str(), self.profile.0),
            (PromptName::PRank.as_str(), self.rank.0),
        ]);
        if let Some((s, _)) = &self.summary {
            v.insert(PromptName::PSum.as_str(), *s);
        }
        v
    }
}

impl Reranker {
    /// The prompts of this request.
    pub(super) async fn prompts_for(&self, req: &RerankRequest) -> Result<Prompts, RerankError> {
        let project = req.project.as_str();
        let production = PromptSelector::Label(PRODUCTION.into());
        let profile = self
            .resolve_prompt(project, PromptName::PGen, &req.prompt, &req.user_id)
            .await?;
        let rank = self
            .resolve_prompt(project, PromptName::PRank, &production, &req.user_id)
            .await?;
        let summary = if self.settings.summaries {
            Some(
                self.resolve_prompt(project, PromptName::PSum, &production, &req.user_id)
                    .await?,
            )
        } else {
            None
        };
        Ok(Prompts {
            profile,
            rank,
            summary,
        })
    }

    /// Resolves a prompt by version or label (an A/B split picks by a stable hash of the user).
    pub async fn resolve_prompt(
        &self,
        project: &str,
        name: PromptName,
        sel: &PromptSelector,
        user: &str,
    ) -> Result<(i32, Arc<String>), RerankError> {
        self.resolve_entry(project, name.as_str(), "prompt", sel, user)
            .await
    }

    /// Resolves a registry entry (a prompt, or the blend: `what` names it in errors) by
    /// version or label, through the label and template caches.
    pub(super) async fn resolve_entry(
        &self,
        project: &str,
        name: &'static str,
        what: &str,
        sel: &PromptSelector,
        user: &str,
    ) -> Result<(i32, Arc<String>), RerankError> {
        let version = match sel {
            PromptSelector::Version(v) => *v,
            PromptSelector::Label(label) => {
                let key = LabelKey {
                    project: project.to_string(),
                    name,
                    label: label.clone(),
                };
                let row = match self.caches.labels.get(&key) {
                    Some(r) => r,
                    None => {
                        let r = crate::store::prompts::label(&self.pool, project, name, label)
                            .await?
                            .ok_or_else(|| {
                                RerankError::Invalid(format!(
                                    "{what} label {label:?} does not exist for {name}"
                                ))
                            })?;
                        let r = Arc::new(r);
                        self.caches.labels.insert(key, r.clone());
                        r
                    }
                };
                label_version(&row, user).ok_or_else(|| {
                    RerankError::Invalid(format!(
                        "{what} label {label:?} of {name} points at no version"
                    ))
                })?
            }
        };
        let tkey = TemplateKey {
            project: project.to_string(),
            name,
            version,
        };
        if let Some(t) = self.caches.templates.get(&tkey) {
            return Ok((version, t));
        }
        let row = crate::store::prompts::version(&self.pool, project, name, version)
            .await?
            .ok_or_else(|| {
                RerankError::Invalid(format!(
                    "{what} version {version} does not exist for {name}"
                ))
            })?;
        let t = Arc::new(row.template);
        self.caches.templates.insert(tkey, t.clone());
        Ok((version, t))
    }
}

/// The version a label gives this user: its version, or the A/B arm chosen by a stable hash
/// of the user id (same user, same arm, on every replica).
pub fn label_version(row: &LabelRow, user: &str) -> Option<i32> {
    if let Some(v) = row.version {
        return Some(v);
    }
    let arms = row.split.as_ref()?;
    choose_arm(&format!("{}/{}", row.name, row.label), user, arms)
}

/// Picks an arm by weight with a hash of (salt, user) as the random draw.
pub fn choose_arm(salt: &str, user: &str, arms: &[SplitArm]) -> Option<i32> {
    let total: f64 = arms.iter().map(|a| a.weight.max(0.0)).sum();
    if total <= 0.0 {
        return arms.first().map(|a| a.version);
    }
    let h = crate::hash::stable_hash(&format!("{salt}\u{0}{user}"));
    let x = (h as f64 / u64::MAX as f64) * total;
    let mut acc = 0.0;
    for a in arms {
        acc += a.weight.max(0.0);
        if x < acc {
            return Some(a.version);
        }
    }
    arms.last().map(|a| a.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab_assignment_is_stable_and_follows_weights() {
        let arms = [
            SplitArm {
                version: 1,
                weight: 0.8,
            },
            SplitArm {
                version: 2,
                weight: 0.2,
            },
        ];
        let mut twos = 0;
        for u in 0..10_000 {
            let user = format!("user-{u}");
            let v = choose_arm("p_gen/production", &user, &arms).unwrap();
            assert_eq!(
                Some(v),
                choose_arm("p_gen/production", &user, &arms),
                "stable"
            );
            if v == 2 {
                twos += 1;
            }
        }
        assert!((1700..2300).contains(&twos), "about 20%: {twos}");
        let zero = [SplitArm {
            version: 5,
            weight: 0.0,
        }];
        assert_eq!(choose_arm("s", "u", &zero), Some(5));
    }
}
