#include "science/references.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <functional>

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
  if (s == "background") return NormalizeMode::background;
  throw ReferenceError("normalize mode must be 'auto', 'always', 'never' or 'background', got '" + s + "'");
}

namespace {

// Pre-edge line subtracted, scale kept. The line goes through the points before the first
// rise (5 % of the way up to the maximum), not over Larch's pre-edge range: where an edge step
// means nothing, E0 and the ranges derived from it are unreliable too (E0 may sit at L2, with
// L3 inside the "pre-edge"). With fewer than 3 such points, the lowest of the first 3 is the level.
void subtract_pre_edge_line(Reference& r, const std::string& why) {
  const auto& e = r.energies_eV;
  auto& mu = r.mu;
  double a = 0, b = 0;
  const double e0 = e.front();
  const auto [mn, mx] = std::minmax_element(mu.begin(), mu.end());
  const double first_rise = *mn + 0.05 * (*mx - *mn);
  std::size_t n = 0;
  while (n < mu.size() && mu[n] < first_rise) ++n;
  if (n >= 3) {
    double se = 0, sm = 0, see = 0, sem = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double x = e[i] - e0;
      se += x, sm += mu[i], see += x * x, sem += x * mu[i];
    }
    const double d = static_cast<double>(n) * see - se * se;
    b = d > 0 ? (static_cast<double>(n) * sem - se * sm) / d : 0.0;
    a = (sm - b * se) / static_cast<double>(n);
  } else {
    a = *std::min_element(mu.begin(), mu.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(3, mu.size())));
  }
  for (std::size_t i = 0; i < mu.size(); ++i) mu[i] -= a + b * (e[i] - e0);
  r.normalized_here = true;
  r.normalization = "pre-edge line subtracted, scale kept (" + why + ")";
}

}  // namespace

void normalize_reference(Reference& r, NormalizeMode mode) {
  if (mode == NormalizeMode::never) {
    r.normalization = "none (normalize=never)";
    return;
  }
  if (mode == NormalizeMode::background) return subtract_pre_edge_line(r, "normalize=background");
  PreEdgeResult pe;
  std::string meaningless;  // why a Larch-style edge step means nothing for this spectrum
  try {
    pe = pre_edge(r.energies_eV, r.mu);
  } catch (const std::exception& e) {
    if (mode == NormalizeMode::always)
      throw ReferenceError("reference '" + r.name + "' in '" + r.source + "': cannot edge-normalize: " + e.what());
    meaningless = std::string("no edge step: ") + e.what();
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
  if (mode == NormalizeMode::automatic && looks_normalized) {
    r.normalization = "already normalized";
    return;
  }
  if (meaningless.empty() && !(pe.edge_step > 0))
    meaningless = "edge step " + std::to_string(pe.edge_step) + " is not positive";
  if (meaningless.empty()) {
    // K-edge white lines peak at ≤ ~2.5 edge steps; L2,3 white lines in OD stand many times
    // the continuum step, and dividing by that small, poorly fitted step is meaningless.
    const double peak = *std::max_element(pe.norm.begin(), pe.norm.end());
    if (peak > 4.0) meaningless = "white line " + std::to_string(peak).substr(0, 4) + " edge steps high, as at an L edge";
  }
  if (!meaningless.empty()) {
    if (mode == NormalizeMode::always)
      throw ReferenceError("reference '" + r.name + "' in '" + r.source + "': cannot edge-normalize: " + meaningless +
                           " (references.normalize=auto or background fits it with its own scale)");
    return subtract_pre_edge_line(r, meaningless);
  }
  r.mu = pe.norm;
  r.normalized_here = true;
  r.normalization = "edge step " + std::to_string(pe.edge_step) + " at E0 " + std::to_string(pe.e0) + " eV";
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

namespace {

// Inflates a gzip stream (Athena writes its projects gzipped) with zlib, never past `limit`
// bytes of output: a small file cannot expand into gigabytes.
std::string gunzip(const std::string& in, const std::filesystem::path& path, std::size_t limit) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) throw ReferenceError("cannot start zlib for '" + path.string() + "'");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  std::vector<char> buf(1 << 16);
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(buf.data());
    zs.avail_out = static_cast<uInt>(buf.size());
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf.data(), buf.size() - zs.avail_out);
    std::string error;
    if (rc != Z_OK && rc != Z_STREAM_END)
      error = "is gzip-compressed but damaged (zlib: " + std::string(zs.msg ? zs.msg : std::to_string(rc)) + ")";
    else if (out.size() > limit)
      error = "expands to more than " + std::to_string(limit >> 20) + " MiB";
    else if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0)
      error = "is gzip-compressed but truncated";
    if (!error.empty() || rc == Z_STREAM_END) {
      inflateEnd(&zs);
      if (!error.empty()) throw ReferenceError("reference file '" + path.string() + "' " + error);
      return out;
    }
  }
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

// Fields of a data or header line: whitespace, commas and semicolons all separate (CSV from
// spreadsheets, tab-separated exports, Athena's space-separated columns).
std::vector<std::string> split_fields(std::string line) {
  std::replace_if(line.begin(), line.end(), [](char ch) { return ch == ',' || ch == ';'; }, ' ');
  std::istringstream ss(line);
  return {std::istream_iterator<std::string>(ss), {}};
}

std::string location(const std::filesystem::path& path, std::size_t lineno) {
  return path.string() + ":" + std::to_string(lineno);
}

// ---- Athena project files -------------------------------------------------------------------
// Athena (Demeter) saves a project as Perl source written by Data::Dumper, one group a record:
//   $old_group = 'abcde';
//   @args = ('label','Goethite','datatype','xmu','bkg_eshift','0',...);
//   @x = ('7000.1','7000.6',...);   @y = (...);   [record] ...
// It is parsed here as data: quoted strings and bare words in a parenthesized list. Nothing in
// it is evaluated.

// The values of `name = (...)` or `name = '...'` on one line; throws with the line on bad syntax.
std::vector<std::string> perl_values(const std::string& line, const std::string& where) {
  auto bad = [&](const std::string& what) { return ReferenceError(where + ": Athena project: " + what); };
  auto i = line.find('=');
  if (i == std::string::npos) throw bad("expected '=' after the name");
  ++i;
  auto skip = [&] { while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i; };
  skip();
  const bool list = i < line.size() && line[i] == '(';
  if (list) ++i;
  std::vector<std::string> out;
  for (;;) {
    skip();
    if (i >= line.size()) throw bad(list ? "list not closed with ')'" : "value missing");
    if (list && line[i] == ')') break;
    if (line[i] == '\'' || line[i] == '"') {
      const char q = line[i++];
      std::string v;
      while (i < line.size() && line[i] != q) {
        if (line[i] == '\\' && i + 1 < line.size()) ++i;
        v += line[i++];
      }
      if (i >= line.size()) throw bad("a quoted value is not closed");
      ++i;
      out.push_back(std::move(v));
    } else {
      const auto b = i;
      while (i < line.size() && line[i] != ',' && line[i] != ')' && line[i] != ';' &&
             !std::isspace(static_cast<unsigned char>(line[i])))
        ++i;
      if (i == b) throw bad("expected a value");
      out.push_back(line.substr(b, i - b));
    }
    if (!list) break;
    skip();
    if (i < line.size() && line[i] == ',') ++i;
    else if (i < line.size() && line[i] != ')') throw bad("expected ',' or ')' in a list");
  }
  return out;
}

std::vector<Reference> load_athena_project(const std::string& text, const std::filesystem::path& path) {
  struct Group {
    std::string old_group;
    std::map<std::string, std::string> args;
    std::vector<double> x, y;
    std::size_t line = 0;
  };
  std::vector<Group> groups;
  Group cur;
  std::istringstream in(text);
  std::string line;
  std::size_t lineno = 0;
  auto numbers = [&](const std::vector<std::string>& v, const std::string& where) {
    std::vector<double> out;
    out.reserve(v.size());
    for (const auto& s : v) {
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0' || !std::isfinite(d)) throw ReferenceError(where + ": Athena project: a value in an array is not a number");
      out.push_back(d);
    }
    return out;
  };
  while (std::getline(in, line)) {
    ++lineno;
    const auto t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const auto where = location(path, lineno);
    if (t.rfind("[record]", 0) == 0) {
      if (!cur.x.empty() || !cur.y.empty()) groups.push_back(std::move(cur));
      cur = Group{};
      continue;
    }
    const auto name = trim(t.substr(0, t.find('=')));
    if (name == "$old_group") {
      const auto v = perl_values(t, where);
      cur.old_group = v.empty() ? "" : v[0];
      cur.line = lineno;
    } else if (name == "@args") {
      const auto v = perl_values(t, where);
      for (std::size_t k = 0; k + 1 < v.size(); k += 2) cur.args[v[k]] = v[k + 1];
      if (!cur.line) cur.line = lineno;
    } else if (name == "@x") {
      cur.x = numbers(perl_values(t, where), where);
    } else if (name == "@y") {
      cur.y = numbers(perl_values(t, where), where);
    }  // @i0, @signal, @stddev, @journal, 1; ...: not needed for a reference
  }
  if (!cur.x.empty() || !cur.y.empty()) groups.push_back(std::move(cur));

  std::vector<Reference> refs;
  std::vector<std::string> skipped;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& gr = groups[g];
    Reference r;
    r.name = gr.args.count("label") ? gr.args.at("label") : gr.old_group;
    if (r.name.empty()) r.name = path.stem().string() + "_" + std::to_string(g + 1);
    const auto type = gr.args.count("datatype") ? gr.args.at("datatype") : "xmu";
    if (type != "xmu" && type != "xanes" && type != "norm") {  // chi(k), chi(R): not energy spectra
      skipped.push_back(r.name + " (" + type + ")");
      continue;
    }
    const auto where = location(path, gr.line);
    if (gr.x.size() != gr.y.size())
      throw ReferenceError(where + ": Athena group '" + r.name + "' has " + std::to_string(gr.x.size()) + " energies and " +
                           std::to_string(gr.y.size()) + " values");
    if (gr.x.size() < 6) throw ReferenceError(where + ": Athena group '" + r.name + "' has fewer than 6 points");
    // Athena shows and exports a group with its energy calibration shift applied.
    const double shift = gr.args.count("bkg_eshift") ? std::strtod(gr.args.at("bkg_eshift").c_str(), nullptr) : 0.0;
    r.source = path.string();
    for (double x : gr.x) r.energies_eV.push_back(x + (std::isfinite(shift) ? shift : 0.0));
    r.mu = gr.y;
    r.column = "Athena group " + (gr.old_group.empty() ? std::to_string(g + 1) : gr.old_group) + " (@y)";
    refs.push_back(std::move(r));
  }
  if (refs.empty())
    throw ReferenceError("Athena project '" + path.string() + "' holds no μ(E) group" +
                         (skipped.empty() ? std::string(" (no @x/@y arrays found)") : " (only " + std::to_string(skipped.size()) + " χ groups)"));
  return refs;
}

// ---- column files: XDI, Athena/Demeter exports, two-column text, CSV with a header ----------

// What a column holds, from its name (XDI's "Column.N: name", a header row).
enum class Role { other, energy, i0, itrans, ifluor, irefer, mu };

Role column_role(const std::string& name) {
  std::istringstream ss(lower(name));
  std::string w;
  ss >> w;
  if (w.rfind("energy", 0) == 0 || w == "e" || w == "e(ev)" || w == "e_ev") return Role::energy;
  if (w == "i0" || w == "io" || w == "mon" || w == "monitor") return Role::i0;
  if (w == "itrans" || w == "it" || w == "i1") return Role::itrans;
  if (w == "ifluor" || w == "if" || w == "ifl" || w == "fluor") return Role::ifluor;
  if (w == "irefer" || w == "iref" || w == "ir" || w == "i2") return Role::irefer;
  return Role::other;
}

// μ-like columns of a beamline scan file, best first: Athena's normalized μ, then μ itself.
int mu_rank(const std::string& name) {
  static const char* order[] = {"norm", "flat", "mu", "xmu", "mutrans", "mu_trans", "mufluor", "mu_fluor", "mu_fl"};
  const auto w = lower(name.substr(0, name.find_first_of(" \t")));
  for (int k = 0; k < static_cast<int>(std::size(order)); ++k)
    if (w == order[k]) return k;
  return -1;
}

}  // namespace

std::vector<Reference> load_reference_file(const std::filesystem::path& path, NormalizeMode normalize, EnergyUnit unit) {
  auto text = read_reference_text(path);
  if (text.size() >= 2 && static_cast<unsigned char>(text[0]) == 0x1f && static_cast<unsigned char>(text[1]) == 0x8b)
    text = gunzip(text, path, static_cast<std::size_t>(kMaxReferenceFileBytes) * 4);
  if (text.find("Athena project file") < 256 || (text.find("@args") != std::string::npos && text.find("[record]") != std::string::npos)) {
    auto refs = load_athena_project(text, path);
    for (auto& r : refs) {
      sort_and_dedupe(r);
      normalize_reference(r, normalize);
    }
    return refs;
  }
  if (text.find('\0') != std::string::npos)
    throw ReferenceError("reference file '" + path.string() + "' is binary, not a text, XDI, CSV or Athena project file");

  std::istringstream in(text);
  std::map<int, std::string> xdi_columns;  // XDI "# Column.N: name"
  std::string declared_name, line;
  std::vector<std::string> header_words;   // the last header line before the data (commented or not)
  EnergyUnit declared_unit = EnergyUnit::automatic;
  std::vector<std::vector<double>> rows;
  std::vector<std::size_t> row_line;
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
      } else if (body.rfind("Name:", 0) == 0 || body.rfind("Sample.name:", 0) == 0) {
        declared_name = trim(body.substr(body.find(':') + 1));
      }
      // A unit declared in the header: "Column.1: energy keV", "units: keV", "energy (eV)".
      if (rows.empty()) {
        const auto lw = lower(body);
        const bool energy_line = lw.find("energy") != std::string::npos || lw.find("unit") != std::string::npos;
        auto has_word = [&](const std::string& w) {
          for (auto pos = lw.find(w); pos != std::string::npos; pos = lw.find(w, pos + 1)) {
            const bool left = pos == 0 || !std::isalpha(static_cast<unsigned char>(lw[pos - 1]));
            const bool right = pos + w.size() >= lw.size() || !std::isalpha(static_cast<unsigned char>(lw[pos + w.size()]));
            if (left && right) return true;
          }
          return false;
        };
        if (energy_line && has_word("kev")) declared_unit = EnergyUnit::keV;
        else if (energy_line && has_word("ev")) declared_unit = EnergyUnit::eV;
        // A column header line ("# energy i0 itrans mutrans"); "key: value" metadata lines are not.
        if (body.find_first_not_of("-=") != std::string::npos && body.find(':') == std::string::npos)
          header_words = split_fields(body);
      }
      continue;
    }
    const auto fields = split_fields(t);
    std::vector<double> vals;
    bool numeric = true;
    for (const auto& tok : fields) {
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (end == tok.c_str() || *end != '\0') {
        numeric = false;
        break;
      }
      vals.push_back(v);
    }
    if (!numeric) {
      if (rows.empty()) {  // a header without '#' before the data: a CSV header row, "=====" lines
        if (t.find_first_not_of("-= ") != std::string::npos) header_words = fields;
        continue;
      }
      throw ReferenceError(location(path, lineno) + ": a value is not a number");  // not quoted: no file contents in errors
    }
    if (!rows.empty() && vals.size() != rows.front().size())
      throw ReferenceError(location(path, lineno) + ": " + std::to_string(vals.size()) + " columns, earlier rows have " +
                           std::to_string(rows.front().size()));
    rows.push_back(std::move(vals));
    row_line.push_back(lineno);
  }
  if (rows.size() < 4)
    throw ReferenceError("reference file '" + path.string() + "': " + std::to_string(rows.size()) +
                         " rows of numbers, at least 4 needed (expected: an energy column and μ columns separated by spaces, "
                         "tabs, commas or semicolons; XDI, CSV with a header row, or an Athena project)");
  const std::size_t ncols = rows.front().size();
  if (ncols < 2) throw ReferenceError("reference file '" + path.string() + "' needs an energy column and at least one spectrum");

  // Column names: XDI Column.N lines, else the header line if it has one word per column.
  std::vector<std::string> names(ncols);
  for (std::size_t c = 0; c < ncols; ++c) {
    if (xdi_columns.count(static_cast<int>(c + 1))) names[c] = xdi_columns[static_cast<int>(c + 1)];
    else if (header_words.size() == ncols) names[c] = header_words[c];
  }
  std::vector<Role> roles(ncols);
  std::size_t ecol = 0;
  bool found_energy = false, beamline_scan = false;
  for (std::size_t c = 0; c < ncols; ++c) {
    roles[c] = column_role(names[c]);
    if (roles[c] == Role::energy && !found_energy) ecol = c, found_energy = true;
    beamline_scan |= roles[c] == Role::i0;
  }

  double emax = 0;
  for (const auto& r : rows) emax = std::max(emax, r[ecol]);
  if (unit == EnergyUnit::automatic) unit = declared_unit;
  if (unit == EnergyUnit::automatic) unit = emax < 100.0 ? EnergyUnit::keV : EnergyUnit::eV;  // e.g. ni_k/*.txt
  const double to_eV = unit == EnergyUnit::keV ? 1000.0 : 1.0;
  const std::string single_name = declared_name.empty() ? path.stem().string() : declared_name;

  auto make = [&](const std::string& name, const std::string& column, const std::function<double(const std::vector<double>&, std::size_t)>& value) {
    Reference r;
    r.name = name;
    r.source = path.string();
    r.column = column;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const double v = value(rows[i], row_line[i]);
      if (!std::isfinite(rows[i][ecol]) || !std::isfinite(v))
        throw ReferenceError(location(path, row_line[i]) + ": reference '" + name + "' has a non-finite value");
      r.energies_eV.push_back(rows[i][ecol] * to_eV);
      r.mu.push_back(v);
    }
    sort_and_dedupe(r);
    normalize_reference(r, normalize);
    return r;
  };
  auto find_role = [&](Role role) {
    for (std::size_t c = 0; c < ncols; ++c)
      if (roles[c] == role) return static_cast<long>(c);
    return -1L;
  };

  std::vector<Reference> refs;
  if (beamline_scan) {
    // A beamline scan (energy, i0, itrans, ...): one spectrum, μ from its μ column or computed
    // from the detector columns. i0 and the other detectors are never references themselves.
    long best = -1;
    for (std::size_t c = 0; c < ncols; ++c)
      if (mu_rank(names[c]) >= 0 && (best < 0 || mu_rank(names[c]) < mu_rank(names[static_cast<std::size_t>(best)])))
        best = static_cast<long>(c);
    const long i0 = find_role(Role::i0), it = find_role(Role::itrans), fl = find_role(Role::ifluor);
    if (best >= 0) {
      const auto c = static_cast<std::size_t>(best);
      refs.push_back(make(single_name, names[c], [c](const std::vector<double>& row, std::size_t) { return row[c]; }));
    } else if (it >= 0 || fl >= 0) {
      const bool trans = it >= 0;
      const auto a = static_cast<std::size_t>(i0), b = static_cast<std::size_t>(trans ? it : fl);
      refs.push_back(make(single_name, trans ? "ln(" + names[a] + "/" + names[b] + ")" : names[b] + "/" + names[a],
                          [&, a, b, trans](const std::vector<double>& row, std::size_t ln) {
                            if (!(row[a] > 0) || (trans && !(row[b] > 0)))
                              throw ReferenceError(location(path, ln) + ": " + (trans ? names[a] + " and " + names[b] : names[a]) +
                                                   " must be positive to compute μ");
                            return trans ? std::log(row[a] / row[b]) : row[b] / row[a];
                          }));
    } else {
      std::string cols;
      for (const auto& n : names) cols += (cols.empty() ? "" : ", ") + n;
      throw ReferenceError("reference file '" + path.string() + "' has detector columns (" + cols +
                           ") but no μ column (norm, flat, mu, mutrans, mufluor) and no itrans or ifluor to compute μ from " +
                           names[static_cast<std::size_t>(i0)]);
    }
    return refs;
  }
  std::size_t spectra = 0;
  for (std::size_t c = 0; c < ncols; ++c) spectra += c != ecol;
  for (std::size_t c = 0; c < ncols; ++c) {
    if (c == ecol) continue;
    std::string name = names[c];
    if (name.empty()) name = spectra == 1 ? single_name : path.stem().string() + "_" + std::to_string(c);
    refs.push_back(make(name, names[c].empty() ? "column " + std::to_string(c + 1) : names[c],
                        [c](const std::vector<double>& row, std::size_t) { return row[c]; }));
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
