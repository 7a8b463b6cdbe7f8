//! `pgha lab ...` on the command line: the verbs, their text and JSON output, and
//! `lab up` composing `pgha deploy` onto the new hosts.

use std::path::Path;

use serde_json::json;

use super::args::{LabArgs, LabCommand, LabHostArgs, LabName, LabUpArgs};
use super::faults::{heal, kill, partition, partition_from, replace_with, start};
use super::hosts::{
    LabHost, LabSpec, NetState, down, lab_network, say, state_word, status, up, validate_user,
};
use super::layout;
use crate::error::{Exit, Failure};
use crate::ui::OutputFormat;

pub async fn command(args: LabArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let json = output == OutputFormat::Json;
    match args.command {
        LabCommand::Up(a) => cmd_up(a, output).await,
        LabCommand::Down(n) => {
            down(&n.name).await?;
            if json {
                println!("{}", json!({"lab": n.name, "removed": true}));
            }
            Ok(Exit::Ok)
        }
        LabCommand::Status(n) => cmd_status(&n, json).await,
        LabCommand::Kill(h) => verb(h, "kill", json).await,
        LabCommand::Start(h) => verb(h, "start", json).await,
        LabCommand::Partition(p) if !p.from.is_empty() => {
            let name = p.host.lab.name.as_str();
            layout::validate_name(name).map_err(Failure::options)?;
            let h = partition_from(name, &p.host.host, &p.from).await?;
            if json {
                println!("{}", json!({"lab": name, "action": "partition", "host": h}));
            }
            Ok(Exit::Ok)
        }
        LabCommand::Partition(p) => verb(p.host, "partition", json).await,
        LabCommand::Heal(h) => verb(h, "heal", json).await,
        LabCommand::Replace(r) => {
            let a = r.host;
            let name = a.lab.name.as_str();
            layout::validate_name(name).map_err(Failure::options)?;
            let h = replace_with(name, &a.host, a.lab.dir.as_deref(), r.new_address).await?;
            if json {
                println!("{}", json!({"lab": name, "action": "replace", "host": h}));
            }
            Ok(Exit::Ok)
        }
    }
}

async fn verb(a: LabHostArgs, action: &str, json: bool) -> Result<Exit, Failure> {
    let name = a.lab.name.as_str();
    layout::validate_name(name).map_err(Failure::options)?;
    let h = match action {
        "kill" => kill(name, &a.host).await?,
        "start" => start(name, &a.host).await?,
        "partition" => partition(name, &a.host).await?,
        _ => heal(name, &a.host).await?,
    };
    if json {
        println!("{}", json!({"lab": name, "action": action, "host": h}));
    }
    Ok(Exit::Ok)
}

/// The hosts as a table.
fn hosts_table(hosts: &[LabHost]) -> String {
    let mut s = format!(
        "{:<10} {:<16} {:<22} {}\n",
        "HOST", "ADDRESS", "CONTAINER", "STATE"
    );
    for h in hosts {
        s.push_str(&format!(
            "{:<10} {:<16} {:<22} {}\n",
            h.name,
            h.address.to_string(),
            h.container,
            state_word(h)
        ));
    }
    s
}

async fn cmd_status(n: &LabName, json: bool) -> Result<Exit, Failure> {
    let name = n.name.as_str();
    let hosts = status(name).await?;
    let (subnet, dir) = match lab_network(name).await? {
        NetState::Ours { subnet, dir } => (subnet, dir),
        _ => (None, None),
    };
    let exists = !hosts.is_empty() || subnet.is_some();
    if json {
        println!(
            "{}",
            json!({"lab": name, "exists": exists, "subnet": subnet, "dir": dir, "hosts": hosts})
        );
        return Ok(Exit::Ok);
    }
    if !exists {
        println!("lab {name}: not created (pgha lab up --name {name})");
        return Ok(Exit::Ok);
    }
    let mut head = format!("lab {name}");
    if let Some(s) = subnet {
        head.push_str(&format!("  network {name} {s}"));
    }
    if let Some(d) = dir {
        head.push_str(&format!("  dir {}", d.display()));
    }
    println!("{head}");
    print!("{}", hosts_table(&hosts));
    Ok(Exit::Ok)
}

async fn cmd_up(a: LabUpArgs, output: OutputFormat) -> Result<Exit, Failure> {
    let name = a.lab.name.clone();
    layout::validate_name(&name).map_err(Failure::options)?;
    validate_user(&a.user)?;
    let dir = a
        .lab
        .dir
        .clone()
        .unwrap_or_else(|| layout::default_dir(&name));
    let spec = LabSpec {
        name: name.clone(),
        db: a.db,
        routers: a.routers,
        dir,
        user: a.user.clone(),
        tls: !a.no_tls,
        docker: a.method == "docker",
        backup: !a.no_backup,
        monitoring: !a.no_monitoring,
    };
    if spec.docker {
        // The images the hosts will run, built here (cached) before the hosts start.
        crate::docker::stack::ensure().await?;
    }
    let info = up(&spec).await?;
    let json = output == OutputFormat::Json;
    let inv = info.inventory_path.display().to_string();
    if a.no_deploy {
        if json {
            println!("{}", serde_json::to_string(&info).unwrap_or_default());
        } else {
            print!("{}", hosts_table(&info.hosts));
            println!("inventory: {inv}");
            println!("deploy onto it: pgha deploy -i {inv}");
        }
        return Ok(Exit::Ok);
    }
    say(&format!(
        "deploying the cluster onto lab {name} (pgha deploy -i {inv})"
    ));
    let exit = deploy_lab(&info.inventory_path, output).await?;
    if exit != Exit::Ok {
        return Ok(exit);
    }
    // deploy printed the connection strings (from the inventory) and where the
    // password is; add only how to take the lab away again.
    say(&format!(
        "lab {name}: `pgha lab status --name {name}` lists its hosts, `pgha lab down --name {name}` removes it"
    ));
    Ok(Exit::Ok)
}

/// `pgha deploy` of a lab's inventory, as the command runs it: secrets and
/// certificates written beside it, host keys verified against its known_hosts.
async fn deploy_lab(inventory: &Path, output: OutputFormat) -> Result<Exit, Failure> {
    use crate::commands::{args::SshArgs, deploy, load_pki, ssh_options};
    let inv = crate::inventory::load(
        inventory,
        &crate::inventory::LoadOptions {
            write_secrets: true,
        },
    )?;
    let pki = load_pki(&inv, true)?;
    let ssh = ssh_options(
        &SshArgs {
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: 10,
        },
        &inv,
    );
    let opts = deploy::DeployOptions::default();
    deploy::deploy(&inv, pki, &opts, ssh, &crate::ui::Ui::new(output)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_state() {
        let hosts = vec![LabHost {
            name: "db1".into(),
            container: "demo-db1".into(),
            address: "172.28.7.11".parse().unwrap(),
            running: false,
            partitioned: true,
            cut_from: Vec::new(),
        }];
        let t = hosts_table(&hosts);
        assert!(
            t.contains("db1        172.28.7.11      demo-db1               stopped, partitioned"),
            "{t}"
        );
    }
}
