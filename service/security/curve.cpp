#include "security/curve.hpp"

#include <spdlog/spdlog.h>
#include <zmq_addon.hpp>

namespace xanesd {

namespace {
const char* kHowToMakeKeys =
    "make keys with `xanesd keygen --out /etc/xanesd/server` (and one `xanesd keygen --out NAME` per client), then set "
    "security.server_key=/etc/xanesd/server.key and list the clients' .pub files in security.ingest_clients, "
    "security.control_clients or security.readonly_clients";
}

// Key files named in the config: an unreadable one stops start-up like any bad config value.
protocol::CurveKeys read_configured_key(const std::filesystem::path& file, const char* key) {
  try {
    return protocol::read_key_file(file);
  } catch (const std::exception& e) {
    throw ConfigError(std::string(key) + ": " + e.what());
  }
}

bool is_loopback_endpoint(const std::string& ep) {
  if (ep.rfind("ipc://", 0) == 0 || ep.rfind("inproc://", 0) == 0) return true;
  if (ep.rfind("tcp://", 0) != 0) return false;
  auto host = ep.substr(6, ep.rfind(':') == std::string::npos || ep.rfind(':') < 6 ? std::string::npos : ep.rfind(':') - 6);
  if (const auto semi = host.find(';'); semi != std::string::npos) host = host.substr(semi + 1);  // source;destination
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void require_keys_for(const std::string& key, const std::string& endpoint, const SecurityConfig& cfg) {
  if (cfg.server_key.empty() && !is_loopback_endpoint(endpoint))
    throw ConfigError(key + " = '" + endpoint + "' is reachable from other machines, which needs CURVE authentication: " +
                      kHowToMakeKeys);
}

Authenticator::Authenticator(zmq::context_t& ctx, const Config& config) : handler_(ctx, zmq::socket_type::rep) {
  const auto& cfg = config.security;
  require_keys_for("ingest.endpoint", config.ingest.endpoint, cfg);
  require_keys_for("publish.endpoint", config.publish.endpoint, cfg);
  require_keys_for("control.endpoint", config.control.endpoint, cfg);
  if (cfg.server_key.empty()) return;
  if (!zmq_has("curve")) throw ConfigError("security.server_key is set but this libzmq has no CURVE support");
  const auto server = read_configured_key(cfg.server_key, "security.server_key");
  if (server.secret_key.empty())
    throw ConfigError("security.server_key '" + cfg.server_key.string() + "' has no secret-key (give the .key file, not the .pub)");
  server_secret_ = server.secret_key;
  auto load = [](const std::vector<std::filesystem::path>& files, std::set<std::string>& into, const char* key) {
    for (const auto& f : files) into.insert(read_configured_key(f, key).public_key);
  };
  load(cfg.ingest_clients, ingest_, "security.ingest_clients");
  load(cfg.control_clients, control_, "security.control_clients");
  load(cfg.readonly_clients, readonly_, "security.readonly_clients");
  handler_.set(zmq::sockopt::linger, 0);
  handler_.set(zmq::sockopt::rcvtimeo, 100);  // so a stop request is noticed
  handler_.bind("inproc://zeromq.zap.01");     // libzmq asks this endpoint for every CURVE handshake
  enabled_ = true;
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
  pthread_setname_np(thread_.native_handle(), "xanesd-zap");
}

Authenticator::~Authenticator() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void Authenticator::secure(zmq::socket_t& socket, const std::string& domain) const {
  if (!enabled_) return;
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, server_secret_);
  socket.set(zmq::sockopt::zap_domain, domain);
}

void Authenticator::refused(const std::string& domain, const std::string& key, const std::string& peer) {
  // Anyone can knock: one log line per second at most, the rest counted in it.
  ++refused_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_log_ < std::chrono::seconds(1)) return;
  last_log_ = now;
  spdlog::warn("CURVE client refused on the {} socket: key {} is not listed for it (peer {}; {} refusal(s) since the last such line)",
               domain, key, peer.substr(0, 64), refused_);
  refused_ = 0;
}

void Authenticator::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::vector<zmq::message_t> req;
    try {
      if (!zmq::recv_multipart(handler_, std::back_inserter(req))) continue;
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      continue;
    }
    // RFC 27: version, request id, domain, address, identity, mechanism, credentials…
    std::string status = "400", text = "not allowed", user;
    if (req.size() >= 7 && req[0].to_string_view() == "1.0" && req[5].to_string_view() == "CURVE" && req[6].size() == 32) {
      char z85[41];
      zmq_z85_encode(z85, static_cast<const std::uint8_t*>(req[6].data()), 32);
      const std::string key(z85), domain = req[2].to_string();
      if (domain == "ingest" && ingest_.count(key)) user = "ingest";
      else if ((domain == "control" || domain == "publish") && control_.count(key)) user = "control";
      else if ((domain == "control" || domain == "publish") && readonly_.count(key)) user = "readonly";
      if (!user.empty()) status = "200", text = "OK";
      else refused(domain, key, req[3].to_string());
    }
    std::vector<zmq::message_t> reply;
    reply.emplace_back(std::string_view("1.0"));
    reply.emplace_back(req.size() > 1 ? req[1].to_string_view() : std::string_view());
    reply.emplace_back(std::string_view(status));
    reply.emplace_back(std::string_view(text));
    reply.emplace_back(std::string_view(user));
    reply.emplace_back();  // metadata: none
    try {
      zmq::send_multipart(handler_, reply);
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
    }
  }
}

}  // namespace xanesd
