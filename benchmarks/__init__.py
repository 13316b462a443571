"""Speed, memory and quality benchmarks. Each script prints a markdown table and writes JSON."""
