// CURVE key files (PROTOCOL.md "Authentication"), shared by the daemon and the C++ clients:
// NAME.key holds a key pair (secret: mode 0600), NAME.pub the public key, as Z85 text lines
// `public-key = …` / `secret-key = …`. `xanesd keygen --out NAME` writes them.
#pragma once

#include <filesystem>
#include <string>

#include <zmq.hpp>

namespace xanesd::protocol {

struct CurveKeys {
  std::string public_key, secret_key;  // Z85 text, 40 characters each; secret empty in a .pub file
};

// A fresh key pair (zmq_curve_keypair); throws if libzmq has no CURVE.
CurveKeys make_curve_keys();
// Writes NAME.key and NAME.pub; refuses to overwrite either.
void write_key_files(const std::filesystem::path& name, const CurveKeys& keys);
// Reads NAME.key or NAME.pub; throws std::runtime_error naming the file.
CurveKeys read_key_file(const std::filesystem::path& file);
// Makes `socket` a CURVE client of the server whose public key is in `server_pub`, with the
// key pair in `client_key`. Call before connect.
void make_curve_client(zmq::socket_t& socket, const std::filesystem::path& server_pub, const std::filesystem::path& client_key);

}  // namespace xanesd::protocol
