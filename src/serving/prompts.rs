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
    /// The prompts of this request, and the control's when its `p_gen` label interleaves
    /// and the user is in the interleaved share (the first are then the treatment's).
    pub(super) async fn prompts_for(
        &self,
        req: &RerankRequest,
    ) -> Result<(Prompts, Option<Prompts>), RerankError> {
        let project = req.project.as_str();
        let production = PromptSelector::Label(PRODUCTION.into());
        let profile = self
            .resolve_pair(
                project,
                PromptName::PGen.as_str(),
                "prompt",
                &req.prompt,
                &req.user_id,
            )
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
        let prompts = Prompts {
            profile: profile.chosen,
            rank,
            summary,
        };
        let control = profile.control.map(|c| Prompts {
            profile: c,
            ..prompts.clone()
        });
        Ok((prompts, control))
    }

    /// Resolves a prompt by version or label (an A/B split picks by a stable hash of the user).
    pub async fn resolve_prompt(
        &self,
        project: &str,
        name: PromptName,
        sel: &PromptSelector,
        user: &str,
    ) -> Result<(i32, Arc<String>), RerankError> {
        Ok(self
            .resolve_pair(project, name.as_str(), "prompt", sel, user)
            .await?
            .chosen)
    }

    /// Resolves a registry entry (a prompt, or the blend: `what` names it in errors) by
    /// version or label, through the label and template caches; with the control's version
    /// too when the label interleaves and this user is in the interleaved share.
    pub(super) async fn resolve_pair(
        &self,
        project: &str,
        name: &'static str,
        what: &str,
        sel: &PromptSelector,
        user: &str,
    ) -> Result<Resolved, RerankError> {
        let (version, control) = match sel {
            PromptSelector::Version(v) => (*v, None),
            PromptSelector::Label(label) => {
                let row = self.label_row(project, name, what, label).await?;
                let version = label_version(&row, user).ok_or_else(|| {
                    RerankError::Invalid(format!(
                        "{what} label {label:?} of {name} points at no version"
                    ))
                })?;
                (version, interleaved_control(&row, version))
            }
        };
        let chosen = (version, self.template(project, name, what, version).await?);
        let control = match control {
            Some(c) => Some((c, self.template(project, name, what, c).await?)),
            None => None,
        };
        Ok(Resolved { chosen, control })
    }

    async fn label_row(
        &self,
        project: &str,
        name: &'static str,
        what: &str,
        label: &str,
    ) -> Result<Arc<LabelRow>, RerankError> {
        let key = LabelKey {
            project: project.to_string(),
            name,
            label: label.to_string(),
        };
        if let Some(r) = self.caches.labels.get(&key) {
            return Ok(r);
        }
        let r = crate::store::prompts::label(&self.pool, project, name, label)
            .await?
            .ok_or_else(|| {
                RerankError::Invalid(format!("{what} label {label:?} does not exist for {name}"))
            })?;
        let r = Arc::new(r);
        self.caches.labels.insert(key, r.clone());
        Ok(r)
    }

    async fn template(
        &self,
        project: &str,
        name: &'static str,
        what: &str,
        version: i32,
    ) -> Result<Arc<String>, RerankError> {
        let tkey = TemplateKey {
            project: project.to_string(),
            name,
            version,
        };
        if let Some(t) = self.caches.templates.get(&tkey) {
            return Ok(t);
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
        Ok(t)
    }
}

/// A resolved entry: the version that answers (for an interleaved user, the treatment), and
/// the control's when the user sees both interleaved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub chosen: (i32, Arc<String>),
    pub control: Option<(i32, Arc<String>)>,
}

/// The control an interleaving label merges with `chosen` (the version drawn for the user):
/// some when the label interleaves and the user was drawn into its last arm.
pub fn interleaved_control(row: &LabelRow, chosen: i32) -> Option<i32> {
    let arms = row.split.as_deref().filter(|_| row.interleave)?;
    let (first, last) = (arms.first()?, arms.last()?);
    (arms.len() >= 2 && chosen == last.version && first.version != last.version)
        .then_some(first.version)
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
