"""The commands behind `genrl <command>`: thin modules that read a config and call the library."""
