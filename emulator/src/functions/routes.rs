//! Route templates of HTTP functions (`enrollments/{registrationId}`, `{id?}`, `{*rest}`,
//! constraints such as `{id:int}`), matched the way ASP.NET routing ranks them: literal segments
//! before parameters before catch-alls.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Parameter { optional: bool },
    CatchAll,
}

/// A parsed route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    segments: Vec<Segment>,
}

impl RouteTemplate {
    /// Parses a template; errors name the problem.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let parts: Vec<&str> = template
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) => {
                    let name = inner.split(':').next().unwrap_or_default();
                    if let Some(rest) = name.strip_prefix('*') {
                        if i + 1 != parts.len() || rest.is_empty() {
                            return Err(format!("catch-all {part} must be the last segment"));
                        }
                        Segment::CatchAll
                    } else if name.trim_end_matches('?').is_empty() {
                        return Err(format!("route segment {part} has no parameter name"));
                    } else {
                        Segment::Parameter {
                            optional: name.ends_with('?') || inner.ends_with('?'),
                        }
                    }
                }
                None if part.contains(['{', '}']) => {
                    return Err(format!(
                        "route segment {part} mixes text and parameters, which is not supported"
                    ))
                }
                None => Segment::Literal(part.to_ascii_lowercase()),
            };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    /// Whether the path (below the prefix, already split) matches.
    pub fn matches(&self, path: &[&str]) -> bool {
        let mut index = 0;
        for segment in &self.segments {
            match segment {
                Segment::CatchAll => return true,
                Segment::Literal(text) => {
                    if path
                        .get(index)
                        .is_none_or(|p| !p.eq_ignore_ascii_case(text))
                    {
                        return false;
                    }
                    index += 1;
                }
                Segment::Parameter { optional } => {
                    if path.get(index).is_some() {
                        index += 1;
                    } else if !optional {
                        return false;
                    }
                }
            }
        }
        index == path.len()
    }

    /// Precedence: more literal segments first, catch-alls last.
    pub fn rank(&self) -> (usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let catch_all = usize::from(self.segments.contains(&Segment::CatchAll));
        (catch_all, usize::MAX - literals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    #[test]
    fn templates_match_literals_parameters_and_catch_alls() {
        let item = RouteTemplate::parse("enrollments/{registrationId}").unwrap();
        assert!(item.matches(&split("enrollments/dev-1")));
        assert!(item.matches(&split("ENROLLMENTS/dev-1")));
        assert!(!item.matches(&split("enrollments")));
        assert!(!item.matches(&split("enrollments/dev-1/code")));
        let optional = RouteTemplate::parse("devices/{id?}").unwrap();
        assert!(optional.matches(&split("devices")) && optional.matches(&split("devices/x")));
        let constrained = RouteTemplate::parse("items/{id:int}").unwrap();
        assert!(constrained.matches(&split("items/7")));
        let rest = RouteTemplate::parse("files/{*path}").unwrap();
        assert!(rest.matches(&split("files/a/b/c")));
        assert!(RouteTemplate::parse("{*rest}/x").is_err());
        assert!(RouteTemplate::parse("a{b}").is_err());
    }

    #[test]
    fn literal_routes_outrank_parameters() {
        let query = RouteTemplate::parse("enrollments/import").unwrap();
        let item = RouteTemplate::parse("enrollments/{id}").unwrap();
        assert!(query.rank() < item.rank());
        assert!(item.rank() < RouteTemplate::parse("{*any}").unwrap().rank());
    }
}
