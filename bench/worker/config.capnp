# workerd configuration for bench/e2e.py: the Worker on one HTTP socket, its API base and key
# read from the environment (HELICONE_API_BASE, HELICONE_API_KEY), and outbound fetches allowed
# to loopback, where the stand-in of Helicone's API listens. The port is set on the command line:
#   workerd serve config.capnp --socket-addr http=127.0.0.1:PORT
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "loopback", network = (allow = ["local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "worker.js")],
  compatibilityDate = "2024-09-23",
  bindings = [
    (name = "HELICONE_API_BASE", fromEnvironment = "HELICONE_API_BASE"),
    (name = "HELICONE_API_KEY", fromEnvironment = "HELICONE_API_KEY"),
  ],
  globalOutbound = "loopback",
);
