"""Weight Evolution (Lin et al., ACM MM 2021) and the suite that reproduces its experiments."""
