//! Finding the cgroup hierarchy at start-up from /proc/self/mountinfo and /proc/self/cgroup,
//! and creating coinop's parent cgroup inside the daemon's own cgroup.

use super::Cgroups;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Controllers a lease cgroup needs.
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where the cgroup filesystems are mounted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// v1: controller name → mount point.
    pub v1: HashMap<String, PathBuf>,
    /// The cgroup2 mount point.
    pub v2: Option<PathBuf>,
}

/// Reads the cgroup mounts out of /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        // Fields: id parent dev root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(super_opts)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        match fstype {
            "cgroup2" => mounts.v2 = Some(PathBuf::from(mount_point)),
            "cgroup" => {
                for opt in super_opts.split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        mounts
                            .v1
                            .insert(opt.to_string(), PathBuf::from(mount_point));
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// Reads /proc/self/cgroup text: controller → this process's cgroup path; the v2 entry
/// (`0::/path`) is under the key "".
pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut own = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            own.insert(String::new(), path.to_string());
        }
        for controller in controllers.split(',').filter(|c| !c.is_empty()) {
            own.insert(controller.to_string(), path.to_string());
        }
    }
    own
}

/// Detects the hierarchy on this host and creates `<parent_name>` in it.
pub fn detect(parent_name: &str) -> Cgroups {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    choose(
        &parse_mountinfo(&mountinfo),
        &parse_proc_cgroup(&own),
        parent_name,
    )
}

/// Picks v2 when it offers every controller, else v1, and creates the parent cgroup.
fn choose(mounts: &Mounts, own: &HashMap<String, String>, parent_name: &str) -> Cgroups {
    let mut reasons = Vec::new();
    match try_v2(mounts, own, parent_name) {
        Ok(cgroups) => return cgroups,
        Err(reason) => reasons.push(format!("v2: {reason}")),
    }
    match try_v1(mounts, own, parent_name) {
        Ok(cgroups) => return cgroups,
        Err(reason) => reasons.push(format!("v1: {reason}")),
    }
    Cgroups::Unavailable {
        reason: reasons.join("; "),
    }
}

fn own_dir(mount: &Path, own: &HashMap<String, String>, key: &str) -> PathBuf {
    let path = own.get(key).map(String::as_str).unwrap_or("/");
    mount.join(path.trim_start_matches('/'))
}

fn try_v2(
    mounts: &Mounts,
    own: &HashMap<String, String>,
    parent_name: &str,
) -> Result<Cgroups, String> {
    let mount = mounts.v2.as_ref().ok_or("no cgroup2 mount")?;
    let base = own_dir(mount, own, "");
    let offered = std::fs::read_to_string(base.join("cgroup.controllers"))
        .map_err(|e| format!("{}/cgroup.controllers: {e}", base.display()))?;
    let missing: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !offered.split_whitespace().any(|o| o == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks the {} controller(s)",
            base.display(),
            missing.join(", ")
        ));
    }
    let parent = base.join(parent_name);
    std::fs::create_dir_all(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    let enable = "+cpu +memory +pids";
    for dir in [&base, &parent] {
        let file = dir.join("cgroup.subtree_control");
        std::fs::write(&file, enable).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(Cgroups::V2 { parent })
}

fn try_v1(
    mounts: &Mounts,
    own: &HashMap<String, String>,
    parent_name: &str,
) -> Result<Cgroups, String> {
    let mut parents = HashMap::new();
    for controller in V1_CONTROLLERS {
        let mount = mounts
            .v1
            .get(controller)
            .ok_or_else(|| format!("the {controller} controller is not mounted"))?;
        let parent = own_dir(mount, own, controller).join(parent_name);
        std::fs::create_dir_all(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        parents.insert(controller, parent);
    }
    let mut take = |c: &str| parents.remove(c).unwrap_or_default();
    Ok(Cgroups::V1 {
        cpu: take("cpu"),
        cpuacct: take("cpuacct"),
        memory: take("memory"),
        pids: take("pids"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_comounted_v1_controllers_and_the_v2_mount() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m.v1["cpuacct"], m.v1["cpu"]);
        assert_eq!(m.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(!m.v1.contains_key("name=systemd"));
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn own_cgroup_paths_per_controller() {
        let own = parse_proc_cgroup("4:memory:/svc/a\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(own["memory"], "/svc/a");
        assert_eq!(own["cpuacct"], "/");
        assert_eq!(own[""], "/user.slice");
        let dir = own_dir(Path::new("/sys/fs/cgroup/memory"), &own, "memory");
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/memory/svc/a"));
    }

    #[test]
    fn v2_is_chosen_when_it_offers_every_controller() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("write");
        let mounts = Mounts {
            v1: HashMap::new(),
            v2: Some(root.path().to_path_buf()),
        };
        let chosen = choose(&mounts, &HashMap::new(), "coinop");
        assert_eq!(
            chosen,
            Cgroups::V2 {
                parent: root.path().join("coinop")
            }
        );
        let enabled = std::fs::read_to_string(root.path().join("coinop/cgroup.subtree_control"))
            .expect("subtree_control written");
        assert_eq!(enabled, "+cpu +memory +pids");
    }

    #[test]
    fn nothing_usable_is_unavailable_with_both_reasons() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("cgroup.controllers"), "").expect("write");
        let mounts = Mounts {
            v1: HashMap::new(),
            v2: Some(root.path().to_path_buf()),
        };
        match choose(&mounts, &HashMap::new(), "coinop") {
            Cgroups::Unavailable { reason } => {
                assert!(reason.contains("lacks the cpu, memory, pids"), "{reason}");
                assert!(reason.contains("cpu controller is not mounted"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
