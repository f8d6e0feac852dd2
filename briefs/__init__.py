"""Example campaign briefs, shipped inside the package as `prefect_evolink.briefs`.

`prefect-evolink demo` runs `spring-launch.yaml` from here, so it works from any directory.
Your own briefs live in your project; see `evolink/brief.py` for every field and rule.
"""
