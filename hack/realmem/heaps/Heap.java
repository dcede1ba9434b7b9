// A Java process's heap as real programs leave it: a Debian package list
// parsed into records in HashMaps and ArrayLists, and arrays of doubles (a
// boxed List<Double> time series, a double[] of prices). hack/realmem
// compiles and starts it, dumps its anonymous memory once it prints
// "ready", then closes stdin.
//
//   java -cp DIR Heap PACKAGES_FILE MAX_PACKAGES FLOATS
import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;

public class Heap {
    public static Object keep;

    public static void main(String[] args) throws IOException {
        String path = args[0];
        int limit = Integer.parseInt(args[1]);
        int nfloats = Integer.parseInt(args[2]);
        List<Map<String, String>> pkgs = new ArrayList<>();
        try (BufferedReader r = Files.newBufferedReader(Paths.get(path), StandardCharsets.UTF_8)) {
            Map<String, String> para = new LinkedHashMap<>();
            String key = null;
            String line;
            while ((line = r.readLine()) != null && pkgs.size() < limit) {
                if (line.isEmpty()) {
                    if (!para.isEmpty()) pkgs.add(para);
                    para = new LinkedHashMap<>();
                    key = null;
                } else if ((line.charAt(0) == ' ' || line.charAt(0) == '\t') && key != null) {
                    para.put(key, para.get(key) + "\n" + line.substring(1));
                } else {
                    int i = line.indexOf(':');
                    if (i > 0) {
                        key = line.substring(0, i);
                        para.put(key, line.substring(i + 1).trim());
                    }
                }
            }
        }
        Map<String, Map<String, String>> byName = new HashMap<>();
        Map<String, List<String>> deps = new HashMap<>();
        Map<String, List<String>> rdeps = new HashMap<>();
        for (Map<String, String> p : pkgs) {
            String name = p.getOrDefault("Package", "");
            byName.put(name, p);
            List<String> ds = new ArrayList<>();
            for (String d : p.getOrDefault("Depends", "").split(",")) {
                String n = d.trim().split("\\s*[(|]")[0];
                if (!n.isEmpty()) {
                    ds.add(n);
                    rdeps.computeIfAbsent(n, k -> new ArrayList<>()).add(name);
                }
            }
            deps.put(name, ds);
        }
        Random rnd = new Random(17);
        List<Double> series = new ArrayList<>();
        for (int i = 0; i < nfloats; i++) {
            series.add(20 + 5 * Math.sin(i / 500.0) + rnd.nextGaussian() * 0.3);
        }
        double[] prices = new double[nfloats];
        for (int i = 0; i < nfloats; i++) prices[i] = Math.round(rnd.nextDouble() * 50000) / 100.0;
        keep = new Object[] {pkgs, byName, deps, rdeps, series, prices};
        System.out.println("ready");
        System.out.flush();
        while (System.in.read() >= 0) {
        }
    }
}
