// NumPy .npy v1.0 output for the benchmarks whose Python side reads what the C++ side made.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <Eigen/Dense>

namespace xanesd::bench {

// float64, written column-major (fortran_order) straight from Eigen.
inline void write_npy(const std::filesystem::path& p, const Eigen::MatrixXd& m) {
  std::string header = "{'descr': '<f8', 'fortran_order': True, 'shape': (" + std::to_string(m.rows()) + ", " +
                       std::to_string(m.cols()) + "), }";
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(p, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  const char le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(le, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(m.data()), static_cast<std::streamsize>(m.size() * sizeof(double)));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

}  // namespace xanesd::bench
