#include "xanesd/protocol/curve_keys.hpp"

#include <sys/stat.h>

#include <fstream>
#include <stdexcept>

namespace xanesd::protocol {

CurveKeys make_curve_keys() {
  char pub[41], sec[41];
  if (!zmq_has("curve") || zmq_curve_keypair(pub, sec) != 0) throw std::runtime_error("this libzmq has no CURVE support");
  return {pub, sec};
}

void write_key_files(const std::filesystem::path& name, const CurveKeys& keys) {
  const std::filesystem::path key = name.string() + ".key", pub = name.string() + ".pub";
  for (const auto& p : {key, pub})
    if (std::filesystem::exists(p)) throw std::runtime_error("'" + p.string() + "' exists; not overwritten");
  {
    const auto old = ::umask(077);  // the secret key is readable by its owner only
    std::ofstream f(key);
    ::umask(old);
    f << "# xanesd CURVE key pair (xanesd keygen): keep it secret\npublic-key = " << keys.public_key
      << "\nsecret-key = " << keys.secret_key << "\n";
    if (!f) throw std::runtime_error("cannot write '" + key.string() + "'");
  }
  std::ofstream f(pub);
  f << "# xanesd CURVE public key (xanesd keygen)\npublic-key = " << keys.public_key << "\n";
  if (!f) throw std::runtime_error("cannot write '" + pub.string() + "'");
}

CurveKeys read_key_file(const std::filesystem::path& file) {
  std::ifstream f(file);
  if (!f) throw std::runtime_error("cannot read key file '" + file.string() + "'");
  auto trim = [](std::string s) {
    s.erase(0, s.find_first_not_of(" \t\r"));
    s.erase(s.find_last_not_of(" \t\r") + 1);
    return s;
  };
  CurveKeys k;
  std::string line;
  for (int n = 0; n < 100 && std::getline(f, line); ++n) {  // a key file is a few short lines
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const auto name = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    if (name == "public-key") k.public_key = value;
    else if (name == "secret-key") k.secret_key = value;
  }
  std::uint8_t raw[32];
  if (k.public_key.size() != 40 || !zmq_z85_decode(raw, k.public_key.c_str()))
    throw std::runtime_error("key file '" + file.string() + "' has no valid public-key (make one with `xanesd keygen --out NAME`)");
  if (!k.secret_key.empty() && (k.secret_key.size() != 40 || !zmq_z85_decode(raw, k.secret_key.c_str())))
    throw std::runtime_error("key file '" + file.string() + "' has an invalid secret-key");
  return k;
}

void make_curve_client(zmq::socket_t& socket, const std::filesystem::path& server_pub, const std::filesystem::path& client_key) {
  const auto server = read_key_file(server_pub), client = read_key_file(client_key);
  if (client.secret_key.empty())
    throw std::runtime_error("'" + client_key.string() + "' has no secret-key (give the client's .key file, not its .pub)");
  socket.set(zmq::sockopt::curve_serverkey, server.public_key);
  socket.set(zmq::sockopt::curve_publickey, client.public_key);
  socket.set(zmq::sockopt::curve_secretkey, client.secret_key);
}

}  // namespace xanesd::protocol
