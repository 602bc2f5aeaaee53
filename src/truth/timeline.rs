//! A value that changes over time: what a system should show, from when.

use presync_engine::Millis;

/// The values a system may show at a moment: usually one; two where presync cannot know the
/// order of two changes (an undated Teams change it learns of after a dated D365 one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed<T>(Vec<T>);

impl<T: Clone + PartialEq> Allowed<T> {
    /// Just `value`.
    pub fn one(value: T) -> Allowed<T> {
        Allowed(vec![value])
    }

    /// These values and `other`'s.
    pub fn or(mut self, other: &Allowed<T>) -> Allowed<T> {
        for v in &other.0 {
            if !self.0.contains(v) {
                self.0.push(v.clone());
            }
        }
        self
    }

    pub fn contains(&self, value: &T) -> bool {
        self.0.contains(value)
    }

    /// Whether every allowed value is such.
    pub fn all(&self, f: impl Fn(&T) -> bool) -> bool {
        self.0.iter().all(f)
    }

    /// The value of the exact order of events (the first).
    pub fn first(&self) -> &T {
        &self.0[0]
    }

    pub fn values(&self) -> &[T] {
        &self.0
    }

    /// Each value through `f` (merging those that become equal).
    pub fn map(&self, f: impl Fn(&T) -> T) -> Allowed<T> {
        let mut out = Allowed(Vec::with_capacity(self.0.len()));
        for v in &self.0 {
            let v = f(v);
            if !out.0.contains(&v) {
                out.0.push(v);
            }
        }
        out
    }
}

impl<T: std::fmt::Debug> std::fmt::Display for Allowed<T> {
    /// `Busy`, or `Busy or Away`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(|v| format!("{v:?}")).collect();
        f.write_str(&all.join(" or "))
    }
}

/// Values from given moments on, in time order. Before the first, the first holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline<T> {
    points: Vec<(Millis, T)>,
}

impl<T: Clone + PartialEq> Timeline<T> {
    /// A timeline holding `value` from `at`.
    pub fn new(at: Millis, value: T) -> Timeline<T> {
        Timeline {
            points: vec![(at, value)],
        }
    }

    /// `value` holds from `at` on (a repeat of the current value changes nothing).
    pub fn set(&mut self, at: Millis, value: T) {
        if self.last() != &value {
            self.points.push((at, value));
        }
    }

    /// The value now.
    pub fn last(&self) -> &T {
        &self.points[self.points.len() - 1].1
    }

    /// The value at `t`.
    #[cfg(test)]
    pub fn at(&self, t: Millis) -> &T {
        let i = self.points.partition_point(|(at, _)| *at <= t);
        &self.points[i.saturating_sub(1)].1
    }

    /// The values and when each began, in order.
    pub fn points(&self) -> &[(Millis, T)] {
        &self.points
    }

    /// Since when `holds` has been true of the value at `t`, without a break; `None` when it is
    /// not true at `t`.
    pub fn true_since(&self, t: Millis, holds: impl Fn(&T) -> bool) -> Option<Millis> {
        let i = self.points.partition_point(|(at, _)| *at <= t).max(1);
        let mut since = None;
        for (at, v) in self.points[..i].iter().rev() {
            if !holds(v) {
                break;
            }
            since = Some(*at);
        }
        since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hold_from_when_they_were_set() {
        let mut t = Timeline::new(0, 'a');
        t.set(10, 'b');
        t.set(15, 'b');
        t.set(20, 'c');
        assert_eq!(t.points().len(), 3, "a repeat is no change");
        assert_eq!(
            (t.at(-5), t.at(9), t.at(10), t.at(25)),
            (&'a', &'a', &'b', &'c')
        );
        assert_eq!(t.true_since(25, |v| *v != 'a'), Some(10));
        assert_eq!(t.true_since(5, |v| *v != 'a'), None);
    }
}
