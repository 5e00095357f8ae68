#include "science/references.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "science/edge_normalize.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <numeric>
#include <sstream>

namespace xanesd::science {
namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Sorts by energy and merges exact repeats so interpolation sees a strictly increasing grid.
void sort_and_dedupe(Reference& r) {
  std::vector<std::size_t> idx(r.energies_eV.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](auto a, auto b) { return r.energies_eV[a] < r.energies_eV[b]; });
  std::vector<double> e, m;
  for (auto i : idx) {
    if (!e.empty() && r.energies_eV[i] == e.back()) continue;
    e.push_back(r.energies_eV[i]);
    m.push_back(r.mu[i]);
  }
  r.energies_eV = std::move(e);
  r.mu = std::move(m);
}

}  // namespace

NormalizeMode normalize_mode_from_string(const std::string& s) {
  if (s == "auto") return NormalizeMode::automatic;
  if (s == "always") return NormalizeMode::always;
  if (s == "never") return NormalizeMode::never;
  throw ReferenceError("normalize mode must be 'auto', 'always' or 'never', got '" + s + "'");
}

void normalize_reference(Reference& r, NormalizeMode mode) {
  if (mode == NormalizeMode::never) return;
  PreEdgeResult pe;
  try {
    pe = pre_edge(r.energies_eV, r.mu);
  } catch (const std::exception& e) {
    throw ReferenceError("reference '" + r.name + "' in '" + r.source + "': cannot edge-normalize: " + e.what());
  }
  r.e0_eV = pe.e0;
  r.edge_step = pe.edge_step;
  // Already normalized: ~0 before the edge and ~1 at the end of the range. Judged on the
  // data, not on the fitted step: over a XANES-only range the post-edge line runs through
  // the white-line oscillations and misjudges the step of a normalized spectrum by up to 30 %.
  // The pre-edge line is no better a judge when the range starts close to the pre-edge peak.
  const std::size_t n = r.mu.size(), part = std::max<std::size_t>(3, n / 8);
  double start_level = 0, end_level = 0;
  for (std::size_t i = 0; i < part; ++i) start_level += r.mu[i] / static_cast<double>(part);
  for (std::size_t i = n - part; i < n; ++i) end_level += r.mu[i] / static_cast<double>(part);
  const bool looks_normalized = std::abs(start_level) < 0.05 && end_level > 0.8 && end_level < 1.25;
  if (mode == NormalizeMode::automatic && looks_normalized) return;
  if (!(pe.edge_step > 0))
    throw ReferenceError("reference '" + r.name + "' in '" + r.source + "': edge step is not positive (" +
                         std::to_string(pe.edge_step) + "): is this an absorption spectrum?");
  r.mu = pe.norm;
  r.normalized_here = true;
}

EnergyUnit energy_unit_from_string(const std::string& s) {
  if (s == "auto") return EnergyUnit::automatic;
  if (s == "eV") return EnergyUnit::eV;
  if (s == "keV") return EnergyUnit::keV;
  throw ReferenceError("energy unit must be 'auto', 'eV' or 'keV', got '" + s + "'");
}

namespace {

// The control socket names these files: opened without blocking (a FIFO or a device never
// stalls the pipeline), checked on the open descriptor to be a regular file of bounded size,
// then read whole. Errors name the path, never what is in it.
std::string read_reference_text(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw ReferenceError("cannot open reference file '" + path.string() + "': " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    throw ReferenceError("reference file '" + path.string() + "' is not a regular file");
  if (st.st_size > kMaxReferenceFileBytes)
    throw ReferenceError("reference file '" + path.string() + "' is larger than " + std::to_string(kMaxReferenceFileBytes >> 20) + " MiB");
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const auto n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  text.resize(got);
  return text;
}

}  // namespace

std::vector<Reference> load_reference_file(const std::filesystem::path& path, NormalizeMode normalize, EnergyUnit unit) {
  std::istringstream in(read_reference_text(path));
  std::map<int, std::string> xdi_columns;  // XDI "# Column.N: name"
  std::string last_comment, declared_name, line;
  EnergyUnit declared_unit = EnergyUnit::automatic;
  std::vector<std::vector<double>> rows;
  std::size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    const auto t = trim(line);
    if (t.empty()) continue;
    if (t[0] == '#') {
      const auto text_at = t.find_first_not_of("#%");  // npos for a bare "#" line (fuzz_references)
      const auto body = text_at == std::string::npos ? std::string() : trim(t.substr(text_at));
      if (body.rfind("Column.", 0) == 0) {
        const auto colon = body.find(':');
        if (colon != std::string::npos) {
          try {
            xdi_columns[std::stoi(body.substr(7, colon - 7))] = trim(body.substr(colon + 1));
          } catch (const std::exception&) {
          }
        }
      } else if (body.rfind("Name:", 0) == 0) {
        declared_name = trim(body.substr(5));
      }
      // A unit declared in the header: "Column.1: energy keV", "units: keV", "energy (eV)".
      if (rows.empty()) {
        std::string lower = body;
        std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
        const bool energy_line = lower.find("energy") != std::string::npos || lower.find("unit") != std::string::npos;
        auto has_word = [&](const std::string& w) {
          for (auto pos = lower.find(w); pos != std::string::npos; pos = lower.find(w, pos + 1)) {
            const bool left = pos == 0 || !std::isalpha(static_cast<unsigned char>(lower[pos - 1]));
            const bool right = pos + w.size() >= lower.size() || !std::isalpha(static_cast<unsigned char>(lower[pos + w.size()]));
            if (left && right) return true;
          }
          return false;
        };
        if (energy_line && has_word("kev")) declared_unit = EnergyUnit::keV;
        else if (energy_line && has_word("ev")) declared_unit = EnergyUnit::eV;
      }
      if (!body.empty() && body.find_first_not_of("-=") != std::string::npos) last_comment = body;
      continue;
    }
    std::istringstream ss(t);
    std::vector<double> vals;
    std::string tok, bad;
    while (ss >> tok) {
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (end == tok.c_str() || *end != '\0') {
        bad = tok;
        break;
      }
      vals.push_back(v);
    }
    if (!bad.empty()) {
      if (rows.empty()) continue;  // a header line without '#' (e.g. "=====") before the data
      throw ReferenceError(path.string() + ":" + std::to_string(lineno) + ": a value is not a number");  // not quoted: no file contents in errors
    }
    if (!rows.empty() && vals.size() != rows.front().size())
      throw ReferenceError(path.string() + ":" + std::to_string(lineno) + ": " + std::to_string(vals.size()) +
                           " columns, earlier rows have " + std::to_string(rows.front().size()));
    rows.push_back(std::move(vals));
  }
  if (rows.size() < 4) throw ReferenceError("reference file '" + path.string() + "' has fewer than 4 data rows");
  const std::size_t ncols = rows.front().size();
  if (ncols < 2) throw ReferenceError("reference file '" + path.string() + "' needs an energy column and at least one spectrum");

  // Column names: XDI Column.N lines, else the last comment line if it has one word per
  // column, else the declared name / file stem.
  std::vector<std::string> names(ncols);
  std::istringstream header(last_comment);
  std::vector<std::string> header_words{std::istream_iterator<std::string>(header), {}};
  for (std::size_t c = 1; c < ncols; ++c) {
    if (xdi_columns.count(static_cast<int>(c + 1))) names[c] = xdi_columns[static_cast<int>(c + 1)];
    else if (header_words.size() == ncols) names[c] = header_words[c];
    else if (ncols == 2) names[c] = declared_name.empty() ? path.stem().string() : declared_name;
    else names[c] = path.stem().string() + "_" + std::to_string(c);
  }

  double emax = 0;
  for (const auto& r : rows) emax = std::max(emax, r[0]);
  if (unit == EnergyUnit::automatic) unit = declared_unit;
  if (unit == EnergyUnit::automatic) unit = emax < 100.0 ? EnergyUnit::keV : EnergyUnit::eV;  // e.g. ni_k/*.txt
  const double to_eV = unit == EnergyUnit::keV ? 1000.0 : 1.0;

  std::vector<Reference> refs;
  for (std::size_t c = 1; c < ncols; ++c) {
    Reference r;
    r.name = names[c];
    r.source = path.string();
    for (const auto& row : rows) {
      if (!std::isfinite(row[0]) || !std::isfinite(row[c]))
        throw ReferenceError("reference '" + r.name + "' in '" + path.string() + "' has a non-finite value");
      r.energies_eV.push_back(row[0] * to_eV);
      r.mu.push_back(row[c]);
    }
    sort_and_dedupe(r);
    normalize_reference(r, normalize);
    refs.push_back(std::move(r));
  }
  return refs;
}

double interpolate(const std::vector<double>& x, const std::vector<double>& y, double xq) {
  if (xq <= x.front()) return y.front();
  if (xq >= x.back()) return y.back();
  const auto it = std::upper_bound(x.begin(), x.end(), xq);
  const auto i = static_cast<std::size_t>(it - x.begin());
  const double t = (xq - x[i - 1]) / (x[i] - x[i - 1]);
  return y[i - 1] + t * (y[i] - y[i - 1]);
}

Eigen::MatrixXd resample(const std::vector<Reference>& refs, const std::vector<double>& energies_eV,
                         double margin_eV) {
  if (refs.empty()) throw ReferenceError("no references loaded");
  if (energies_eV.empty()) throw ReferenceError("no energies to resample the references onto");
  const auto [lo, hi] = std::minmax_element(energies_eV.begin(), energies_eV.end());
  Eigen::MatrixXd out(static_cast<Eigen::Index>(energies_eV.size()), static_cast<Eigen::Index>(refs.size()));
  for (std::size_t k = 0; k < refs.size(); ++k) {
    const auto& r = refs[k];
    if (*lo < r.energies_eV.front() - margin_eV || *hi > r.energies_eV.back() + margin_eV) {
      std::ostringstream msg;
      msg << "reference '" << r.name << "' covers " << r.energies_eV.front() << "–" << r.energies_eV.back()
          << " eV but the scan spans " << *lo << "–" << *hi << " eV (allowed margin " << margin_eV
          << " eV, references.margin_eV)";
      throw ReferenceError(msg.str());
    }
    for (std::size_t j = 0; j < energies_eV.size(); ++j)
      out(static_cast<Eigen::Index>(j), static_cast<Eigen::Index>(k)) = interpolate(r.energies_eV, r.mu, energies_eV[j]);
  }
  return out;
}

}  // namespace xanesd::science
