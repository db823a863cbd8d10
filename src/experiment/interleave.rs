//! Team-draft interleaving (Radlinski, Kurup and Joachims 2008, "How does clickthrough data
//! reflect retrieval quality?"): one list merged from two rankings of the same candidates.
//! In every round a coin says which team picks first; each team then adds its highest
//! ranked item not yet in the list, and the item remembers its team. Clicks credit the team
//! whose item was clicked: a request is a win for the treatment, a loss, or a tie.
//!
//! One refinement: an item both rankings place at the same rank is both teams' item
//! (`Team::Both`), and a click on it credits neither. Which team drafts it is a coin's
//! decision, so its credit would be a coin flip: zero on average, pure variance. Two prompts of
//! one ranker agree on most of a list, so without this most clicks would be such coin flips.
//!
//! The coins come from the request id, so the same request merges the same way on every
//! replica and in every replay.

use super::arm::Arm;

/// Whose item a position of a merged list is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Team {
    Control,
    Treatment,
    /// Both rankings have the item at this rank: a click on it credits neither.
    Both,
}

impl Team {
    /// The stored letter.
    fn letter(self) -> char {
        match self {
            Team::Control => 'c',
            Team::Treatment => 't',
            Team::Both => 'b',
        }
    }

    /// Reads a stored letter.
    fn from_letter(c: char) -> Option<Team> {
        match c {
            'c' => Some(Team::Control),
            't' => Some(Team::Treatment),
            'b' => Some(Team::Both),
            _ => None,
        }
    }

    /// The arm credited for a click (none for `Both`).
    pub fn credited(self) -> Option<Arm> {
        match self {
            Team::Control => Some(Arm::Control),
            Team::Treatment => Some(Arm::Treatment),
            Team::Both => None,
        }
    }
}

/// The merged list (indices into the candidates), per position the team that drafted it, and
/// per position whose item it is for credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interleaved {
    pub order: Vec<usize>,
    pub picked_by: Vec<Arm>,
    pub teams: Vec<Team>,
}

/// A deterministic stream of coin flips from a seed (splitmix64).
struct Coins(u64);

impl Coins {
    fn flip(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// The seed of a request's coin flips.
pub fn seed(request_id: &str) -> u64 {
    crate::hash::stable_hash(&format!("interleave\u{0}{request_id}"))
}

/// Team-draft merges `control` and `treatment` (two orders of the same candidates, best
/// first). An item either ranking lacks is still placed, by the other team; the merged list
/// holds every item of both once.
pub fn team_draft(control: &[usize], treatment: &[usize], seed: u64) -> Interleaved {
    let mut coins = Coins(seed);
    let total = {
        let mut all: Vec<usize> = control.iter().chain(treatment).copied().collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    };
    let mut taken = std::collections::HashSet::with_capacity(total);
    let mut out = Interleaved {
        order: Vec::with_capacity(total),
        picked_by: Vec::with_capacity(total),
        teams: Vec::with_capacity(total),
    };
    let (mut ci, mut ti) = (0usize, 0usize);
    let (mut picks_c, mut picks_t) = (0usize, 0usize);
    while out.order.len() < total {
        let control_picks = picks_c < picks_t || (picks_c == picks_t && coins.flip());
        let (list, cursor, team) = if control_picks {
            (control, &mut ci, Arm::Control)
        } else {
            (treatment, &mut ti, Arm::Treatment)
        };
        while *cursor < list.len() && taken.contains(&list[*cursor]) {
            *cursor += 1;
        }
        let Some(&item) = list.get(*cursor) else {
            // This team has nothing left: the other one gives the rest.
            let (rest, rest_team) = if control_picks {
                (treatment, Arm::Treatment)
            } else {
                (control, Arm::Control)
            };
            for &i in rest {
                if taken.insert(i) {
                    out.order.push(i);
                    out.picked_by.push(rest_team);
                }
            }
            break;
        };
        taken.insert(item);
        out.order.push(item);
        out.picked_by.push(team);
        match team {
            Arm::Control => picks_c += 1,
            Arm::Treatment => picks_t += 1,
        }
    }
    let rank = |list: &[usize]| -> std::collections::HashMap<usize, usize> {
        list.iter().enumerate().map(|(r, &i)| (i, r)).collect()
    };
    let (rank_c, rank_t) = (rank(control), rank(treatment));
    out.teams = out
        .order
        .iter()
        .zip(&out.picked_by)
        .map(|(item, by)| match (rank_c.get(item), rank_t.get(item)) {
            (Some(a), Some(b)) if a == b => Team::Both,
            _ => match by {
                Arm::Control => Team::Control,
                Arm::Treatment => Team::Treatment,
            },
        })
        .collect();
    out
}

/// Teams as stored (`c`/`t`/`b` per position).
pub fn encode_teams(teams: &[Team]) -> String {
    teams.iter().map(|t| t.letter()).collect()
}

/// Reads stored teams as the arm each position credits (`b`, or an unknown letter: none).
pub fn decode_teams(s: &str) -> Vec<Option<Arm>> {
    s.chars()
        .map(|c| Team::from_letter(c).and_then(Team::credited))
        .collect()
}

/// Distinct positive items credited to each team: (control, treatment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    pub control: usize,
    pub treatment: usize,
}

/// What a request says about the two rankings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// More clicks on the treatment's items.
    Win,
    /// More clicks on the control's items.
    Loss,
    /// Clicks, as many on each team.
    Tie,
    /// No click: says nothing.
    NoClick,
}

impl Credit {
    /// The credit of a list shown in `order` with `teams`, given the positive items.
    pub fn of<'a>(
        order: &[String],
        teams: &[Option<Arm>],
        positives: impl IntoIterator<Item = &'a str>,
    ) -> Credit {
        let positives: std::collections::HashSet<&str> = positives.into_iter().collect();
        let mut c = Credit::default();
        for (id, team) in order.iter().zip(teams) {
            if !positives.contains(id.as_str()) {
                continue;
            }
            match team {
                Some(Arm::Control) => c.control += 1,
                Some(Arm::Treatment) => c.treatment += 1,
                None => {}
            }
        }
        c
    }

    pub fn preference(self) -> Preference {
        use std::cmp::Ordering::*;
        match (
            self.treatment.cmp(&self.control),
            self.control + self.treatment,
        ) {
            (_, 0) => Preference::NoClick,
            (Greater, _) => Preference::Win,
            (Less, _) => Preference::Loss,
            (Equal, _) => Preference::Tie,
        }
    }
}

/// A user's preference for the treatment: (wins - losses) / (wins + losses), none without a
/// non-tie request.
pub fn user_preference(wins: i64, losses: i64) -> Option<f64> {
    let n = wins + losses;
    (n > 0).then(|| (wins - losses) as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(order: &[usize]) -> Vec<String> {
        order.iter().map(|i| format!("i{i}")).collect()
    }

    #[test]
    fn both_top_items_come_first_and_each_order_is_kept() {
        let control = [0, 1, 2, 3, 4, 5, 6, 7];
        let treatment = [7, 6, 5, 4, 3, 2, 1, 0];
        let mut first_control = 0;
        for r in 0..200 {
            let m = team_draft(&control, &treatment, seed(&format!("req-{r}")));
            assert_eq!(m.order.len(), 8);
            // Reversed rankings of an even length never agree on a rank.
            assert!(m.teams.iter().all(|t| *t != Team::Both), "{m:?}");
            let mut sorted = m.order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, control.to_vec(), "every item once");
            let top2: Vec<usize> = m.order[..2].to_vec();
            assert!(top2.contains(&0) && top2.contains(&7), "{m:?}");
            // Each team's items appear in its own ranking's relative order.
            for (team, ranking) in [
                (Arm::Control, &control[..]),
                (Arm::Treatment, &treatment[..]),
            ] {
                let picked: Vec<usize> = m
                    .order
                    .iter()
                    .zip(&m.picked_by)
                    .filter(|(_, t)| **t == team)
                    .map(|(i, _)| *i)
                    .collect();
                let pos = |i: usize| ranking.iter().position(|x| *x == i).unwrap();
                assert!(picked.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{m:?}");
            }
            // Teams stay balanced: after every even position, as many picks each.
            for n in (2..=8).step_by(2) {
                let c = m.picked_by[..n]
                    .iter()
                    .filter(|t| **t == Arm::Control)
                    .count();
                assert_eq!(c, n / 2, "{m:?}");
            }
            first_control += usize::from(m.picked_by[0] == Arm::Control);
        }
        assert!(
            (70..130).contains(&first_control),
            "fair coin: {first_control}"
        );
    }

    #[test]
    fn the_same_request_merges_the_same_way() {
        let (c, t) = ([3, 1, 4, 0, 2], [2, 4, 0, 1, 3]);
        let a = team_draft(&c, &t, seed("abc"));
        assert_eq!(a, team_draft(&c, &t, seed("abc")));
        let differs = (0..50).any(|r| team_draft(&c, &t, seed(&format!("r{r}"))) != a);
        assert!(differs, "other requests flip other coins");
    }

    #[test]
    fn identical_rankings_merge_into_the_same_order() {
        let order = [4, 2, 0, 1, 3];
        let m = team_draft(&order, &order, 42);
        assert_eq!(m.order, order.to_vec());
        assert!(m.teams.iter().all(|t| *t == Team::Both));
        // Rankings that agree on the top two and differ below: the top two credit neither.
        let m = team_draft(&[0, 1, 2, 3], &[0, 1, 3, 2], 9);
        assert_eq!(&m.teams[..2], &[Team::Both, Team::Both]);
        assert!(m.teams[2..].iter().all(|t| *t != Team::Both), "{m:?}");
        let at = |i: usize| m.teams[m.order.iter().position(|x| *x == i).unwrap()];
        assert_eq!((at(2), at(3)), (Team::Control, Team::Treatment));
    }

    #[test]
    fn an_item_one_ranking_lacks_is_placed_by_the_other() {
        let m = team_draft(&[0, 1], &[1, 0, 2], 7);
        let mut sorted = m.order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2]);
        let at = m.order.iter().position(|i| *i == 2).unwrap();
        assert_eq!(m.teams[at], Team::Treatment);
    }

    #[test]
    fn clicks_credit_the_team_that_supplied_the_item() {
        let order = ids(&[0, 7, 1, 6]);
        let teams = decode_teams("ctct");
        assert_eq!(
            encode_teams(&[Team::Control, Team::Treatment, Team::Both]),
            "ctb"
        );
        let c = Credit::of(&order, &teams, ["i7"]);
        assert_eq!((c.control, c.treatment), (0, 1));
        assert_eq!(c.preference(), Preference::Win);
        let c = Credit::of(&order, &teams, ["i0", "i1", "i6"]);
        assert_eq!(c.preference(), Preference::Loss);
        let c = Credit::of(&order, &teams, ["i0", "i7"]);
        assert_eq!(c.preference(), Preference::Tie);
        assert_eq!(
            Credit::of(&order, &teams, []).preference(),
            Preference::NoClick
        );
        // Nor does one both rankings had at that rank.
        let shared = decode_teams("btct");
        assert_eq!(
            Credit::of(&order, &shared, ["i0"]).preference(),
            Preference::NoClick
        );
        assert_eq!(
            Credit::of(&order, &shared, ["i0", "i7"]).preference(),
            Preference::Win
        );
        // An item not shown earns nothing.
        assert_eq!(
            Credit::of(&order, &teams, ["i9"]).preference(),
            Preference::NoClick
        );
        assert_eq!(user_preference(3, 1), Some(0.5));
        assert_eq!(user_preference(0, 0), None);
    }
}
