//! Walk the YAML tree of an Ansible inventory (`all: {vars, hosts, children}`)
//! into groups, hosts and variable definitions, keeping where each came from.

use std::collections::HashMap;

use yaml_serde::{Mapping, Value as Yaml};

use super::Ctx;
use super::locate::Seg;

/// Where a variable was set, for precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    All,
    Group(String),
    Host(String),
}

/// One `key: value` written in a vars block or under a host.
#[derive(Debug, Clone)]
pub(crate) struct Def {
    pub key: String,
    pub value: Yaml,
    pub path: Vec<Seg>,
    pub level: Level,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Group {
    pub name: String,
    pub parents: Vec<String>,
    pub children: Vec<String>,
    /// Hosts listed directly under this group's `hosts:`.
    pub hosts: Vec<String>,
    /// Indices into `Tree::defs`.
    pub vars: Vec<usize>,
    /// Where the group was first defined.
    pub path: Vec<Seg>,
}

#[derive(Debug, Clone)]
pub(crate) struct HostEntry {
    pub name: String,
    /// Indices into `Tree::defs`, in file order.
    pub vars: Vec<usize>,
    /// (group listing the host, path of the host entry), in file order.
    pub seen: Vec<(String, Vec<Seg>)>,
}

#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub defs: Vec<Def>,
    /// Groups in order of first appearance (`all` first).
    pub groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    /// Hosts in order of first appearance.
    pub hosts: Vec<HostEntry>,
    host_index: HashMap<String, usize>,
}

impl Tree {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.group_index.get(name).map(|&i| &self.groups[i])
    }

    fn group_mut(&mut self, name: &str, path: &[Seg]) -> &mut Group {
        let i = match self.group_index.get(name) {
            Some(&i) => i,
            None => {
                self.groups.push(Group {
                    name: name.to_string(),
                    path: path.to_vec(),
                    ..Group::default()
                });
                self.group_index
                    .insert(name.to_string(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }

    fn host_mut(&mut self, name: &str) -> &mut HostEntry {
        let i = match self.host_index.get(name) {
            Some(&i) => i,
            None => {
                self.hosts.push(HostEntry {
                    name: name.to_string(),
                    vars: Vec::new(),
                    seen: Vec::new(),
                });
                self.host_index
                    .insert(name.to_string(), self.hosts.len() - 1);
                self.hosts.len() - 1
            }
        };
        &mut self.hosts[i]
    }
}

fn child(path: &[Seg], k: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::key(k));
    p
}

/// Build the tree. Structural problems are reported to `ctx`; what can be read is kept.
pub(crate) fn parse(ctx: &mut Ctx, root: &Yaml) -> Tree {
    let mut tree = Tree::default();
    let map = match root {
        Yaml::Mapping(m) if m.contains_key("all") => m,
        Yaml::Null => {
            ctx.error(
                "the inventory is empty: it must start with `all:` holding vars, hosts and children",
            );
            return tree;
        }
        Yaml::Mapping(m) => {
            let first = m.keys().next().and_then(|k| k.as_str()).unwrap_or("");
            ctx.error_at(
                &[Seg::key(first)],
                format!(
                    "the top level must be `all:` (Ansible YAML inventory form `all: {{vars, hosts, children}}`); \
                     found `{first}:`: put your groups under `all: children:`"
                ),
            );
            return tree;
        }
        other => {
            let hint = if super::looks_like_ini(ctx.text()) {
                super::INI_HINT
            } else {
                ""
            };
            ctx.error(format!(
                "the top level must be a mapping starting with `all:`, found {}{hint}",
                super::vars::describe(other)
            ));
            return tree;
        }
    };
    for (k, _) in map {
        let name = k.as_str().unwrap_or("?");
        if name != "all" {
            ctx.error_at(
                &[Seg::key(name)],
                format!(
                    "top-level key `{name}`: an inventory has the single top-level key `all:`; \
                     move group `{name}` under `all: children:`"
                ),
            );
        }
    }
    walk_group(
        ctx,
        &mut tree,
        "all",
        &map["all"],
        vec![Seg::key("all")],
        None,
    );
    tree
}

fn walk_group(
    ctx: &mut Ctx,
    tree: &mut Tree,
    name: &str,
    value: &Yaml,
    path: Vec<Seg>,
    parent: Option<&str>,
) {
    {
        let g = tree.group_mut(name, &path);
        if let Some(p) = parent
            && !g.parents.iter().any(|x| x == p)
        {
            g.parents.push(p.to_string());
        }
    }
    if let Some(p) = parent {
        let pg = tree.group_mut(p, &path);
        if !pg.children.iter().any(|x| x == name) {
            pg.children.push(name.to_string());
        }
    }
    let map = match value {
        Yaml::Null => return,
        Yaml::Mapping(m) => m,
        other => {
            ctx.error_at(
                &path,
                format!(
                    "group `{name}` must be a mapping with `hosts:`, `vars:` or `children:`, found {}",
                    super::vars::describe(other)
                ),
            );
            return;
        }
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            ctx.error_at(&path, format!("group `{name}`: keys must be strings"));
            continue;
        };
        let kpath = child(&path, key);
        match key {
            "hosts" => walk_hosts(ctx, tree, name, v, kpath),
            "vars" => {
                let defs = walk_vars(ctx, tree, v, &kpath, Level::group(name), name);
                tree.group_mut(name, &path).vars.extend(defs);
            }
            "children" => match v {
                Yaml::Null => {}
                Yaml::Mapping(children) => {
                    for (ck, cv) in children {
                        let Some(cname) = ck.as_str() else {
                            ctx.error_at(&kpath, format!("group `{name}`: child group names must be strings"));
                            continue;
                        };
                        let cpath = child(&kpath, cname);
                        if cname == "all" {
                            ctx.error_at(&cpath, "`all` cannot be a child group: it already holds every host");
                            continue;
                        }
                        if let Some(problem) = bad_name(cname) {
                            ctx.error_at(&cpath, format!("group name `{cname}` {problem}"));
                            continue;
                        }
                        walk_group(ctx, tree, cname, cv, cpath, Some(name));
                    }
                }
                Yaml::Sequence(_) => ctx.error_at(
                    &kpath,
                    format!(
                        "group `{name}`: `children:` must be a mapping of group names (write `db:` on its own line, not `- db`)"
                    ),
                ),
                other => ctx.error_at(
                    &kpath,
                    format!(
                        "group `{name}`: `children:` must be a mapping of group names, found {}",
                        super::vars::describe(other)
                    ),
                ),
            },
            other => {
                let hint = match ["hosts", "vars", "children"]
                    .into_iter()
                    .find(|c| strsim::damerau_levenshtein(&other.to_ascii_lowercase(), c) <= 2)
                {
                    Some(c) => format!("did you mean `{c}`?"),
                    None if super::vars::spec(other).is_some() || other.starts_with("ansible_") => {
                        format!("variables go under `vars:` (`{name}: vars: {other}: ...`)")
                    }
                    None => "a group holds only `hosts:`, `vars:` and `children:`".to_string(),
                };
                ctx.error_at(&kpath, format!("group `{name}`: unknown key `{other}`: {hint}"));
            }
        }
    }
}

impl Level {
    fn group(name: &str) -> Level {
        if name == "all" {
            Level::All
        } else {
            Level::Group(name.to_string())
        }
    }
}

fn walk_hosts(ctx: &mut Ctx, tree: &mut Tree, group: &str, value: &Yaml, path: Vec<Seg>) {
    let map: &Mapping = match value {
        Yaml::Null => return,
        Yaml::Mapping(m) => m,
        Yaml::Sequence(_) => {
            ctx.error_at(
                &path,
                format!(
                    "group `{group}`: `hosts:` must be a mapping: write each host as `db1:` on its own line \
                     (followed by its variables, or nothing), not as a list"
                ),
            );
            return;
        }
        other => {
            ctx.error_at(
                &path,
                format!(
                    "group `{group}`: `hosts:` must be a mapping of host names, found {}",
                    super::vars::describe(other)
                ),
            );
            return;
        }
    };
    for (k, v) in map {
        let host = match k {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            _ => {
                ctx.error_at(
                    &path,
                    format!("group `{group}`: host names must be strings"),
                );
                continue;
            }
        };
        let hpath = child(&path, &host);
        if let Some(problem) = bad_name(&host) {
            let hint = if host.contains('[') {
                "host ranges like db[1:3] are not supported: list each host"
            } else if host.contains(':') {
                "`name:port` is not supported: set `ansible_port:` under the host"
            } else {
                "put the address in `ansible_host:` and give the host a short name"
            };
            ctx.error_at(&hpath, format!("host name `{host}` {problem}: {hint}"));
            continue;
        }
        {
            let g = tree.group_mut(group, &path);
            if !g.hosts.contains(&host) {
                g.hosts.push(host.clone());
            }
        }
        tree.host_mut(&host)
            .seen
            .push((group.to_string(), hpath.clone()));
        match v {
            Yaml::Null => {}
            Yaml::Mapping(_) => {
                let defs = walk_vars(ctx, tree, v, &hpath, Level::Host(host.clone()), &host);
                tree.host_mut(&host).vars.extend(defs);
            }
            other => ctx.error_at(
                &hpath,
                format!(
                    "host `{host}`: expected its variables as a mapping (or nothing), found {}",
                    super::vars::describe(other)
                ),
            ),
        }
    }
}

fn walk_vars(
    ctx: &mut Ctx,
    tree: &mut Tree,
    value: &Yaml,
    path: &[Seg],
    level: Level,
    owner: &str,
) -> Vec<usize> {
    let map = match value {
        Yaml::Null => return Vec::new(),
        Yaml::Mapping(m) => m,
        other => {
            ctx.error_at(
                path,
                format!(
                    "`{owner}`: variables must be a mapping of `name: value`, found {}",
                    super::vars::describe(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            ctx.error_at(path, format!("`{owner}`: variable names must be strings"));
            continue;
        };
        tree.defs.push(Def {
            key: key.to_string(),
            value: v.clone(),
            path: child(path, key),
            level: level.clone(),
        });
        out.push(tree.defs.len() - 1);
    }
    out
}

/// Host and group names become Patroni member names, etcd member names and file
/// names: keep them to letters, digits, `.`, `_` and `-`.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > 63 {
        return Some("is longer than 63 characters");
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Some("must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Some("may contain only letters, digits, `.`, `_` and `-`");
    }
    None
}
